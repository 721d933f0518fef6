// Unary Router.Place at fixed concurrency, then Complete for a share of the placements.
// Driven by bench/place_load.py; env: ADDR (host:port), VUS, DURATION, COMPLETE_SHARE (0..1), SUMMARY (path).
import grpc from 'k6/net/grpc';
import { Counter, Trend } from 'k6/metrics';
import exec from 'k6/execution';

const ADDR = __ENV.ADDR;
const COMPLETE_SHARE = parseFloat(__ENV.COMPLETE_SHARE || '0.9');
const PLACE = 'turnout.v1.Router/Place';
const COMPLETE = 'turnout.v1.Router/Complete';
const DISCARD = { discardResponseMessage: true }; // status only: the message is not decoded

export const options = {
  scenarios: {
    place: {
      executor: 'constant-vus',
      vus: parseInt(__ENV.VUS || '32', 10),
      duration: __ENV.DURATION || '15s',
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max', 'count'],
  // Thresholds that always pass: they only make k6 report the per-method sub-metrics.
  thresholds: {
    [`grpc_req_duration{name:/${PLACE}}`]: ['max>=0'],
    [`grpc_req_duration{name:/${COMPLETE}}`]: ['max>=0'],
  },
};

// One counter per gRPC status code (0..16) for Place and Complete: k6 only reports tag breakdowns through
// thresholds, so separate metrics are simpler to read back.
const placeByCode = [];
const completeByCode = [];
for (let c = 0; c <= 16; c++) {
  placeByCode.push(new Counter(`place_code_${c}`));
  completeByCode.push(new Counter(`complete_code_${c}`));
}
const placeCalls = new Counter('place_calls');

const client = new grpc.Client();
let connected = false;

// Realistic shapes: chat-style prompts (a few hundred to a few thousand tokens), bounded outputs.
const MODELS = ['llama-3.1-8b', 'llama-3.1-8b', 'llama-3.1-8b', 'llama-3.1-70b'];
const PRIORITIES = ['PRIORITY_STANDARD', 'PRIORITY_STANDARD', 'PRIORITY_CRITICAL', 'PRIORITY_SHEDDABLE'];

function pick(a) {
  return a[Math.floor(Math.random() * a.length)];
}

export default function () {
  if (!connected) {
    client.connect(ADDR, { plaintext: true, reflect: true });
    connected = true;
  }
  const input = 200 + Math.floor(Math.random() * 3800);
  const maxOut = pick([256, 512, 1024]);
  const req = {
    request_id: `u-${exec.vu.idInTest}-${exec.vu.iterationInScenario}-${Date.now()}`,
    model: pick(MODELS),
    tenant: `tenant-${exec.vu.idInTest % 8}`,
    priority: pick(PRIORITIES),
    input_tokens: input,
    max_output_tokens: maxOut,
    expected_output_tokens: Math.floor(maxOut / 2),
  };
  // Whether this placement, if granted, is completed is drawn up front, so that k6 decodes only the
  // answers whose lease id it needs (decoding a four-candidate Placement into a JS object is a large part
  // of k6's own CPU per call, and k6 shares the cores with the server).
  const complete = Math.random() < COMPLETE_SHARE;
  const res = client.invoke(PLACE, req, complete ? {} : DISCARD);
  placeCalls.add(1);
  (placeByCode[Number(res.status)] || placeByCode[2]).add(1); // status is a Go value: Number() it
  if (complete && Number(res.status) === 0) {
    const c = client.invoke(
      COMPLETE,
      {
        lease_id: res.message.leaseId,
        input_tokens: input,
        output_tokens: req.expected_output_tokens,
        ttft_ms: 150,
        tpot_ms: 20,
        success: true,
      },
      DISCARD,
    );
    (completeByCode[Number(c.status)] || completeByCode[2]).add(1);
  }
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
