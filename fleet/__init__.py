"""The fleet model: catalog, model registry, performance and power model, endpoints, live state."""
