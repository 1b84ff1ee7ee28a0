"""The reference's PyTorch checkpoints: import (without torch, without pickle code)."""
