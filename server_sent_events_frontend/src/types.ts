/** Report statuses, the state machine and how each status is shown. Mirrors the server's rules. */

export const REPORT_STATUSES = [
  'pending',
  'queued',
  'processing',
  'completed',
  'failed',
  'canceled',
] as const;

export type ReportStatus = (typeof REPORT_STATUSES)[number];

export interface Report {
  userId: string;
  reportId: string;
  reportStatus: ReportStatus;
  /** RFC 3339 timestamp, e.g. "2026-11-22T04:30:00.123Z". */
  createdAt: string;
}

/** Allowed next statuses; `completed` is final. */
export const ALLOWED_TRANSITIONS: Readonly<Record<ReportStatus, readonly ReportStatus[]>> = {
  pending: ['queued', 'canceled'],
  queued: ['processing', 'canceled'],
  processing: ['completed', 'failed'],
  failed: ['pending'],
  canceled: ['pending'],
  completed: [],
};

/** Status circle colours, as in the original dashboard. */
export const STATUS_COLORS: Readonly<Record<ReportStatus, string>> = {
  pending: 'yellow',
  queued: 'orange',
  processing: '#93C47D',
  canceled: '#E06666',
  failed: 'red',
  completed: 'green',
};

export function isReportStatus(value: unknown): value is ReportStatus {
  return typeof value === 'string' && (REPORT_STATUSES as readonly string[]).includes(value);
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function isUuid(value: string): boolean {
  return UUID_RE.test(value);
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Validates a report coming from the network; returns null when the shape is wrong. */
export function parseReport(value: unknown): Report | null {
  if (!isRecord(value)) return null;
  const { userId, reportId, reportStatus, createdAt } = value;
  if (
    typeof userId !== 'string' ||
    typeof reportId !== 'string' ||
    !isReportStatus(reportStatus) ||
    typeof createdAt !== 'string'
  ) {
    return null;
  }
  return { userId, reportId, reportStatus, createdAt };
}

/** `report_status_update` event payload: `{"id":"<reportId>","status":"queued"}`. */
export function parseStatusUpdate(value: unknown): { id: string; status: ReportStatus } | null {
  if (!isRecord(value)) return null;
  const { id, status } = value;
  if (typeof id !== 'string' || !isReportStatus(status)) return null;
  return { id, status };
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * The `sub` and `exp` of a JWT, read without checking it (the server checks it); null when the
 * text is not a JWT with a string `sub`.
 */
export function tokenClaims(token: string): { sub: string; exp: number | null } | null {
  const parts = token.trim().split('.');
  if (parts.length !== 3 || !parts[1]) return null;
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = base64 + '='.repeat((4 - (base64.length % 4)) % 4);
    const payload: unknown = JSON.parse(atob(padded));
    if (!isRecord(payload) || typeof payload.sub !== 'string') return null;
    return { sub: payload.sub, exp: typeof payload.exp === 'number' ? payload.exp : null };
  } catch {
    return null;
  }
}
