"""Values: requests, events, results, traces, schemas and the error tree. No I/O, no renderer."""
