/**
 * The OpenAPI 3.1 document at /v1/openapi.json, generated from the same ajv
 * schemas the routes validate with (OpenAPI 3.1 schemas are JSON Schema), so
 * the document cannot drift from what the server accepts. A test checks that
 * every route the app serves is listed here and no listed route is missing.
 */
import * as admin from '../shared/schemas/admin.ts';
import * as protocol from '../shared/schemas/protocol.ts';

interface RouteDoc {
  method: 'get' | 'post' | 'put' | 'patch' | 'delete' | 'head';
  path: string;
  summary: string;
  auth: 'none' | 'device' | 'viewer' | 'release' | 'admin';
  body?: object | 'octet-stream';
  query?: object;
  response?: object;
}

const ERROR = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: { code: { type: 'string', pattern: '^ERR_[A-Z0-9_]+$' }, message: { type: 'string' }, details: { type: 'object' } },
    },
  },
} as const;

export const ROUTES: readonly RouteDoc[] = [
  { method: 'get', path: '/healthz', summary: 'Liveness and store reachability', auth: 'none' },
  { method: 'get', path: '/metrics', summary: 'Prometheus metrics (text format)', auth: 'none' },
  { method: 'get', path: '/v1/openapi.json', summary: 'This document', auth: 'none' },
  { method: 'get', path: '/v1/keyring', summary: 'The root-signed keyring (release and server keys)', auth: 'none' },
  { method: 'post', path: '/v1/devices/enroll', summary: 'Enroll a device with an enrollment token; returns its credential', auth: 'none', body: protocol.enrollRequestSchema, response: protocol.enrollResponseSchema },
  { method: 'post', path: '/v1/check', summary: 'Device check-in: signed noUpdate or update offer', auth: 'device', body: protocol.checkRequestSchema, response: protocol.checkResponseSchema },
  { method: 'post', path: '/v1/events', summary: 'Device progress and outcome events (idempotent per event id)', auth: 'device', body: protocol.eventsRequestSchema },
  { method: 'get', path: '/v1/payloads/{sha256}', summary: 'A payload, content-addressed; single Range, ETag, immutable (HEAD too)', auth: 'none' },
  { method: 'get', path: '/v1/admin/whoami', summary: 'The calling token', auth: 'viewer' },
  { method: 'post', path: '/v1/admin/tokens', summary: 'Create an admin API token', auth: 'admin', body: admin.tokenCreateSchema },
  { method: 'get', path: '/v1/admin/tokens', summary: 'List admin API tokens', auth: 'admin' },
  { method: 'delete', path: '/v1/admin/tokens/{id}', summary: 'Revoke an admin API token', auth: 'admin' },
  { method: 'post', path: '/v1/admin/enrollment-tokens', summary: 'Create an enrollment token for a product and channel', auth: 'admin', body: admin.enrollmentTokenCreateSchema },
  { method: 'get', path: '/v1/admin/enrollment-tokens', summary: 'List enrollment tokens', auth: 'admin' },
  { method: 'delete', path: '/v1/admin/enrollment-tokens/{id}', summary: 'Revoke an enrollment token', auth: 'admin' },
  { method: 'post', path: '/v1/admin/releases', summary: 'Publish an image (raw body): full payload now, deltas in a background job', auth: 'release', body: 'octet-stream', query: admin.publishImageQuerySchema },
  { method: 'post', path: '/v1/admin/payloads', summary: 'Publish a payload made offline (raw body), verified on upload', auth: 'release', body: 'octet-stream', query: admin.publishPayloadQuerySchema },
  { method: 'get', path: '/v1/admin/releases', summary: 'Releases with rollout and stats', auth: 'viewer', query: admin.releaseListQuerySchema },
  { method: 'get', path: '/v1/admin/releases/{id}', summary: 'One release', auth: 'viewer' },
  { method: 'patch', path: '/v1/admin/releases/{id}', summary: 'Mark a release as stepping stone or allowed rollback target', auth: 'release', body: admin.releasePatchSchema },
  { method: 'get', path: '/v1/admin/rollouts/{channel}/{version}', summary: 'A release by channel and version', auth: 'viewer', query: admin.productQuerySchema },
  { method: 'put', path: '/v1/admin/rollouts/{channel}/{version}', summary: 'Set percentage, pause, resume, halt, thresholds', auth: 'release', body: admin.rolloutUpdateSchema },
  { method: 'get', path: '/v1/admin/status', summary: 'Per channel: releases, rollouts, stats, adoption by version', auth: 'viewer', query: admin.releaseListQuerySchema },
  { method: 'get', path: '/v1/admin/devices', summary: 'Devices (paged by id)', auth: 'viewer', query: admin.deviceListQuerySchema },
  { method: 'get', path: '/v1/admin/devices/{id}', summary: 'A device with its failures and event history', auth: 'viewer', query: admin.limitQuerySchema },
  { method: 'delete', path: '/v1/admin/devices/{id}', summary: 'Remove a device (its credential stops working; it may enroll again)', auth: 'release' },
  { method: 'post', path: '/v1/admin/devices/{id}/clear-failure', summary: 'Offer a failed release to the device again', auth: 'release', body: admin.clearFailureSchema },
  { method: 'put', path: '/v1/admin/devices/{id}/pin', summary: 'Pin the device to a version (null unpins)', auth: 'release', body: admin.devicePinSchema },
  { method: 'get', path: '/v1/admin/jobs', summary: 'Background jobs', auth: 'viewer', query: admin.limitQuerySchema },
  { method: 'get', path: '/v1/admin/jobs/{id}', summary: 'One background job', auth: 'viewer' },
  { method: 'get', path: '/v1/admin/audit', summary: 'Audit log, newest first', auth: 'admin', query: admin.limitQuerySchema },
];

function parametersOf(route: RouteDoc): object[] {
  const params: object[] = [];
  for (const m of route.path.matchAll(/\{([a-z0-9]+)\}/gi)) params.push({ name: m[1], in: 'path', required: true, schema: { type: 'string' } });
  const q = route.query as { properties?: Record<string, object>; required?: string[] } | undefined;
  for (const [name, schema] of Object.entries(q?.properties ?? {})) {
    params.push({ name, in: 'query', required: q?.required?.includes(name) ?? false, schema });
  }
  return params;
}

export function openApiDocument(): object {
  const paths: Record<string, Record<string, object>> = {};
  for (const route of ROUTES) {
    const op: Record<string, unknown> = {
      summary: route.summary,
      parameters: parametersOf(route),
      responses: {
        '200': route.response ? { description: 'OK', content: { 'application/json': { schema: route.response } } } : { description: 'OK' },
        '4XX': { description: 'Error', content: { 'application/json': { schema: ERROR } } },
      },
    };
    if (route.auth !== 'none') op.security = [{ bearer: [] }];
    if (route.auth !== 'none') op['x-tandem-role'] = route.auth;
    if (route.body === 'octet-stream') op.requestBody = { required: true, content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } };
    else if (route.body) op.requestBody = { required: true, content: { 'application/json': { schema: route.body } } };
    (paths[route.path] ??= {})[route.method] = op;
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Tandem update server', version: '1' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    paths,
  };
}
