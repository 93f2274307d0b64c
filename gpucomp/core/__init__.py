"""What every layer shares: the compositing contract (the result, free of any
backend), the error types, memory and cache locations, and telemetry."""
