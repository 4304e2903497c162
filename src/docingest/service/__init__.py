"""The upload service (``docingest serve``): resumable uploads, jobs and progress over HTTP and WebSocket."""
