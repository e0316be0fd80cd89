"""The models of the primer. Every model honours one contract: `logits, loss = model(x, y=None)`."""
