"""OCI images on one host: references, a content-addressed store, archives and a registry client."""
