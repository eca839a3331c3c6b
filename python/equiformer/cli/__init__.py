"""Command-line tools: equiformer-train, equiformer-eval (and equiformer-export)."""
