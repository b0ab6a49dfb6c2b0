"""Entry points: placeholder until the engine lands."""


class SamplingParams:
    def __init__(self, max_tokens=16, temperature=0.0, **kw):
        self.max_tokens = max_tokens
        self.temperature = temperature


class LLM:
    pass


def cli_main():
    pass


def api_server_main():
    pass
