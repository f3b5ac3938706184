"""Meta's Python Business SDK pointed at a running capi-relay (driven by tests/it/sdk.rs).

Prints one JSON line per step: what the SDK returned, or the exception it raised.
"""
import json
import os
import sys

from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.messaging_channel import MessagingChannel
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError

env = os.environ
# The one-line change: the relay's URL instead of graph.facebook.com, a capi-relay key as token.
FacebookAdsApi.init(access_token=env["RELAY_KEY"], crash_log=False)._session.GRAPH = env["RELAY_BASE"]
NOW = int(env["NOW"])


class ChannelEvent(Event):
    """The SDK knows only WhatsApp and has no PSID/IGSID fields: add them after normalising."""

    def __init__(self, channel, extra_user_data, **kwargs):
        super().__init__(**kwargs)
        self._channel = channel
        self._extra = extra_user_data

    def normalize(self):
        payload = super().normalize()
        payload["messaging_channel"] = self._channel
        payload["user_data"].update(self._extra)
        return payload


def whatsapp(i):
    return Event(
        event_name="Purchase",
        event_time=NOW - 60,
        event_id=f"py-wa-{i}",
        action_source=ActionSource.BUSINESS_MESSAGING,
        messaging_channel=MessagingChannel.WHATSAPP,
        user_data=UserData(ctwa_clid=f"ARApy{i}", email="Buyer.Name@Example.com", phone="+55 11 98765-4321"),
        custom_data=CustomData(currency="brl", value=99.9, order_id=f"o-{i}"),
    )


def messenger(i):
    return ChannelEvent(
        "messenger",
        {"page_scoped_user_id": f"{7000000000000000 + i}"},
        event_name="LeadSubmitted",
        event_time=NOW - 30,
        event_id=f"py-ms-{i}",
        action_source=ActionSource.BUSINESS_MESSAGING,
        user_data=UserData(page_id=env["PAGE"], first_names=["Valéry"]),
    )


def instagram(i):
    return ChannelEvent(
        "instagram",
        {"instagram_business_account_id": env["IG"], "ig_sid": f"{8000000000000000 + i}"},
        event_name="QualifiedLead",
        event_time=NOW - 20,
        event_id=f"py-ig-{i}",
        action_source=ActionSource.BUSINESS_MESSAGING,
        user_data=UserData(external_id="crm-7"),
    )


def send(step, dataset, events, **kwargs):
    try:
        response = EventRequest(events=events, pixel_id=dataset, **kwargs).execute()
        out = {"step": step, "events_received": response.events_received,
               "messages": response.messages, "fbtrace_id": response.fbtrace_id}
    except FacebookRequestError as e:
        out = {"step": step, "error": True, "code": e.api_error_code(),
               "subcode": e.api_error_subcode(), "transient": e.api_transient_error(),
               "blame": e.api_blame_field_specs(), "status": e.http_status()}
    print(json.dumps(out), flush=True)


send("wa-single", env["WABA_DATASET"], [whatsapp(1)])
send("wa-batch", env["WABA_DATASET"], [whatsapp(2), whatsapp(3)], test_event_code="TEST1")
send("wa-batch-again", env["WABA_DATASET"], [whatsapp(2), whatsapp(3)], test_event_code="TEST1")
send("ms-single", env["PAGE_DATASET"], [messenger(1)])
send("ms-batch", env["PAGE_DATASET"], [messenger(2), messenger(3)])
send("ig-single", env["IG_DATASET"], [instagram(1)])
send("ig-batch", env["IG_DATASET"], [instagram(2), instagram(3)])
stale = whatsapp(9)
stale.event_time = NOW - 8 * 24 * 3600
send("refused", env["WABA_DATASET"], [whatsapp(8), stale])
sys.exit(0)
