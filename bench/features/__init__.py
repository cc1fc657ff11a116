"""Features: encoders turn modality views into pooled/token tensors, cached on disk by content key."""
