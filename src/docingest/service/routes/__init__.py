"""The upload service's endpoints, one router per resource."""
