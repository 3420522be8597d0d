"""The errors a provider raises to steer retries, and the ones the SDK raises to its callers."""


class ProviderError(Exception):
    """Base of the errors a provider raises on purpose. `code` becomes the ARM error code."""

    code = "ProviderError"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class RetryableError(ProviderError):
    """A transient failure: the job is retried with backoff until its attempts run out."""

    code = "RetryableError"


class PermanentError(ProviderError):
    """A failure that another attempt cannot fix: the job ends `Failed` now with this code.

    An ordinary outcome (a GET of a missing resource, a request the target refuses), so it is not a dead
    letter: any tenant could otherwise fill the DLQ and fire its alerts at will. A provider that wants the
    job kept for an operator to inspect and redrive passes `dead_letter=True`.
    """

    code = "PermanentError"

    def __init__(self, message: str = "", *, code: str | None = None, dead_letter: bool = False) -> None:
        super().__init__(message, code=code)
        self.dead_letter = dead_letter


class BrokerUnavailable(Exception):
    """The broker did not confirm a message: nothing was accepted, the caller may retry."""


class DeadLettersBusy(BrokerUnavailable):
    """Another operator's walk of the dead-letter queue did not end in time: nothing was done; retry."""


class UnroutableJob(Exception):
    """The broker has no queue bound for the job: it was returned, not accepted."""
