"""stub package (only what Equiformer imports)"""
