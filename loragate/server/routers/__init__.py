"""One thin router per route family: parse, call a service, shape the response."""
