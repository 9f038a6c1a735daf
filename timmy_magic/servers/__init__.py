"""Starting and stopping local model servers: launch commands and the embedded default model."""
