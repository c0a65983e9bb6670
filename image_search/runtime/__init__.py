"""How the process runs its work: the threads that run PyTorch's CPU work (threads.py)."""
