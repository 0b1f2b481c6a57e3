"""Python method handlers: bindings that templates cannot express.

A definition method names one that is registered (the ``prefect_integrations.handlers``
entry-point group, see `prefect_integrations.definitions.handler_registry`), by name or by
its ``"package.module:attribute"`` target; the object implements
`prefect_integrations.definitions.MethodHandler` (``build_request(ctx)`` and
``parse_response(response, ctx)``). Shipped handlers:

- `prefect_integrations.handlers.gmail.send_message`: Gmail ``users.messages.send`` with an
  RFC 2822 message built by `email.message.EmailMessage`.

Provider-specific helpers used by the shipped bindings: `prefect_integrations.handlers.xero`
(Xero's ``/Date(...)/`` dates, for the ``xero_date`` template filter).
"""
