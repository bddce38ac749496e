"""dm-crypt building blocks: cipher spec parsing and IV generators (pure), sector encryption."""
