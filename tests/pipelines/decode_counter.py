"""A PyAV container wrapper for tests that assert which frames a reader decodes, not only which
it returns (seeking and early stops are invisible in the output)."""


class CountingContainer:
    def __init__(self, container, on_frame):
        self.container = container
        self.on_frame = on_frame

    def __getattr__(self, name):
        return getattr(self.container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.container.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self.container.decode(*args, **kwargs):
            self.on_frame(frame)
            yield frame
