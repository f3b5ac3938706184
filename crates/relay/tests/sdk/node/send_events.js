// Meta's Node Business SDK pointed at a running capi-relay (driven by tests/it/sdk.rs).
// Prints one JSON line per step: what the SDK returned, or the error it raised.
'use strict';
const bizSdk = require('facebook-nodejs-business-sdk');
const {FacebookAdsApi, EventRequest, ServerEvent, UserData, CustomData} = bizSdk;

const env = process.env;
// The one-line change: the relay's URL instead of graph.facebook.com, a capi-relay key as token.
Object.defineProperty(FacebookAdsApi, 'GRAPH', {get: () => env.RELAY_BASE});
FacebookAdsApi.init(env.RELAY_KEY);
const NOW = Number(env.NOW);

// The SDK has no PSID, IGSID or account fields: add them after normalising.
class ChannelUserData extends UserData {
  constructor(extra) {
    super();
    this.extra = extra;
  }
  normalize() {
    return Object.assign(super.normalize(), this.extra);
  }
}

function event(name, id, channel, userData, time) {
  return new ServerEvent()
    .setEventName(name)
    .setEventTime(time)
    .setEventId(id)
    .setActionSource('business_messaging')
    .setMessagingChannel(channel)
    .setUserData(userData);
}

function whatsapp(i) {
  const userData = new UserData().setCtwaClid(`ARAjs${i}`).setEmail('Buyer.Name@Example.com');
  return event('Purchase', `js-wa-${i}`, 'whatsapp', userData, NOW - 60)
    .setCustomData(new CustomData().setCurrency('brl').setValue(99.9).setOrderId(`o-${i}`));
}

function messenger(i) {
  const userData = new ChannelUserData({page_scoped_user_id: `${7100000000000000 + i}`})
    .setPageId(env.PAGE).setFirstName('Valéry');
  return event('LeadSubmitted', `js-ms-${i}`, 'messenger', userData, NOW - 30);
}

function instagram(i) {
  const userData = new ChannelUserData({instagram_business_account_id: env.IG, ig_sid: `${8100000000000000 + i}`})
    .setExternalId('crm-7');
  return event('QualifiedLead', `js-ig-${i}`, 'instagram', userData, NOW - 20);
}

async function send(step, dataset, events, testEventCode) {
  const request = new EventRequest(env.RELAY_KEY, dataset).setEvents(events);
  if (testEventCode) request.setTestEventCode(testEventCode);
  let out;
  try {
    const response = await request.execute();
    out = {step, events_received: response.events_received, messages: response.messages,
      fbtrace_id: response.fbtrace_id};
  } catch (e) {
    // FacebookRequestError.response is Meta's `error` object.
    const error = e.response || {};
    out = {step, error: true, name: e.name, status: e.status, code: error.code,
      subcode: error.error_subcode, transient: error.is_transient,
      blame: error.error_data && error.error_data.blame_field_specs};
  }
  console.log(JSON.stringify(out));
}

(async () => {
  await send('wa-single', env.WABA_DATASET, [whatsapp(1)]);
  await send('wa-batch', env.WABA_DATASET, [whatsapp(2), whatsapp(3)], 'TEST1');
  await send('wa-batch-again', env.WABA_DATASET, [whatsapp(2), whatsapp(3)], 'TEST1');
  await send('ms-single', env.PAGE_DATASET, [messenger(1)]);
  await send('ms-batch', env.PAGE_DATASET, [messenger(2), messenger(3)]);
  await send('ig-single', env.IG_DATASET, [instagram(1)]);
  await send('ig-batch', env.IG_DATASET, [instagram(2), instagram(3)]);
  const stale = whatsapp(9).setEventTime(NOW - 8 * 24 * 3600);
  await send('refused', env.WABA_DATASET, [whatsapp(8), stale]);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
