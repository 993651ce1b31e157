"""pbxbrain: the call-control brain for Asterisk."""

__version__ = "0.1.0"
