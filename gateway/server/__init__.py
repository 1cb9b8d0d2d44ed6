"""The listeners: the main token listener and the admin listener."""
