"""GitOps: the fleet as stack files in Git (`citrus-deploy gitops`)."""
