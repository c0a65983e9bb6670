"""Who may ask, and what they may have read: the rules a server (or any process) applies to its callers.

- roots.py: IMAGE_SEARCH_ALLOWED_ROOTS, the only folders that ingests and query images may read from
- tokens.py: the access token a server bound beyond this machine asks of every request
- hosts.py: which Host headers a server answers (DNS rebinding), and the addresses other machines can use

The modules are imported one by one (nothing is imported here): settings read roots.py on every start.
"""
