class Executor:
    pass


class UniProcExecutor(Executor):
    pass
