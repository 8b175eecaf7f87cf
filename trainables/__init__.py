"""One trial: load a base model, wrap it with a PEFT method, train, evaluate, report."""
