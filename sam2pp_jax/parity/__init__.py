"""parity subpackage."""
