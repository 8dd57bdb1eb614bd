"""GitOps: the fleet as stack files in Git (`python -m gitops`)."""
