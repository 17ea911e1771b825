"""The `sendit` command (operators and researchers); not part of the deployed functions bundle."""
