"""What belongs to a dataset as such: its name (names: what a valid one is) and its lock (locks: one process
changes a dataset at a time). Its records live in store/, its vectors in vectors/.
"""
