"""Gmail handlers: ``users.messages.send`` with a real RFC 2822 message.

The inputs of ``gmail.send_message`` (``to``, ``cc``, ``bcc``, ``subject``, ``reply_to``,
``body_text``, ``body_html``, ``thread_id``) are assembled with the standard library's
`email.message.EmailMessage` under the SMTP policy restricted to 7-bit output: CRLF line
endings, non-ASCII header text encoded per RFC 2047, bodies in UTF-8 sent as 7bit when they
are ASCII and quoted-printable or base64 otherwise, so the message survives any relay. With both
bodies the message is ``multipart/alternative`` (text first, then HTML, as RFC 2046 orders
alternatives from plainest to richest). The bytes are base64url-encoded into the ``raw``
field of ``POST {base}/users/{userId}/messages/send``; Gmail sets ``From``, ``Date`` and
``Message-ID`` and removes the ``Bcc`` header before delivery.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import httpx

from prefect_integrations._templates import path_segment
from prefect_integrations.definitions import RequestContext
from prefect_integrations.exceptions import ValidationError

__all__ = ["SendMessage", "build_message", "send_message"]

_POLICY = SMTP.clone(cte_type="7bit")


def _has_line_break(text: str) -> bool:
    """True if ``text`` has a line boundary (CR, LF, or any other `str.splitlines` breaks)."""
    return "".join(text.splitlines()) != text


def _header_text(inputs: Mapping[str, Any], name: str) -> str | None:
    value = inputs.get(name)
    if value is None:
        return None
    text = str(value)
    if _has_line_break(text):  # a line break would start a new header
        raise ValidationError(
            "Input of 'gmail.send_message'", (name,), "must not contain line breaks"
        )
    return text


def _addresses(inputs: Mapping[str, Any], name: str) -> str | None:
    value = inputs.get(name)
    if not value:
        return None
    items: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
    for index, item in enumerate(items):
        if _has_line_break(str(item)):
            raise ValidationError(
                "Input of 'gmail.send_message'", (name, index), "must not contain line breaks"
            )
    return ", ".join(str(item) for item in items)


def build_message(inputs: Mapping[str, Any]) -> EmailMessage:
    """Build the RFC 2822 message of ``gmail.send_message`` from its inputs."""
    message = EmailMessage(policy=_POLICY)
    for header, name in (("To", "to"), ("Cc", "cc"), ("Bcc", "bcc")):
        addresses = _addresses(inputs, name)
        if addresses:
            message[header] = addresses
    reply_to = _header_text(inputs, "reply_to")
    if reply_to:
        message["Reply-To"] = reply_to
    subject = _header_text(inputs, "subject")
    if subject is not None:
        message["Subject"] = subject
    text, html = inputs.get("body_text"), inputs.get("body_html")
    if text is not None:
        message.set_content(str(text), subtype="plain", charset="utf-8")
        if html is not None:
            message.add_alternative(str(html), subtype="html", charset="utf-8")
    elif html is not None:
        message.set_content(str(html), subtype="html", charset="utf-8")
    else:
        message.set_content("", subtype="plain", charset="utf-8")
    return message


class SendMessage:
    """`MethodHandler` of ``gmail.send_message`` (users.messages.send)."""

    def build_request(self, ctx: RequestContext) -> httpx.Request:
        """``POST {base}/users/{userId}/messages/send`` with ``{"raw", "threadId"}``."""
        raw = base64.urlsafe_b64encode(build_message(ctx.inputs).as_bytes()).decode("ascii")
        body: dict[str, Any] = {"raw": raw}
        if ctx.inputs.get("thread_id"):
            body["threadId"] = ctx.inputs["thread_id"]
        user_id = path_segment(ctx.config.get("user_id") or "me", name=("config", "user_id"))
        return httpx.Request(
            "POST",
            f"{ctx.base_url}/users/{user_id}/messages/send",
            headers={"Content-Type": "application/json"},
            content=json.dumps(body, separators=(",", ":")).encode("ascii"),
        )

    def parse_response(self, response: httpx.Response, ctx: RequestContext) -> Any:
        """Map the sent Message resource to ``{id, thread_id, label_ids}``."""
        sent = response.json()
        output: dict[str, Any] = {"id": sent.get("id"), "thread_id": sent.get("threadId")}
        if isinstance(sent.get("labelIds"), list):
            output["label_ids"] = sent["labelIds"]
        return output


send_message = SendMessage()
"""The handler named in ``definitions/gmail.json`` as ``...handlers.gmail:send_message``."""
