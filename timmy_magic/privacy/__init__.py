"""What never leaves the kernel: the redaction of shown text and the masking of what is sent."""
