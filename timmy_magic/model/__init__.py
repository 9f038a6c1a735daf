"""Values: requests, events, results, traces, schemas, token estimates and the error tree.
No I/O, no renderer."""
