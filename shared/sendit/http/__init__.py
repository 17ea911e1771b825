"""The HTTP edge: request parsing, responses, and the one place errors become HTTP statuses."""
