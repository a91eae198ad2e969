"""Socket implementations per protocol; the public entry is ``ustack.socket``."""
