import { describe, expect, it } from 'vitest';
import { applyEvents, initialReportsState, reportsReducer } from './reportsState';
import { makeReport } from './test/fakes';

describe('applyEvents', () => {
  const a = makeReport('pending', 1);
  const b = makeReport('queued', 2);

  it('adds a created report once, in creation order', () => {
    const once = applyEvents([b], [{ kind: 'created', report: a }]);
    expect(once.reports.map((r) => r.reportId)).toEqual([a.reportId, b.reportId]);
    const twice = applyEvents(once.reports, [{ kind: 'created', report: a }]);
    expect(twice.reports).toBe(once.reports);
  });

  it('updates a status idempotently', () => {
    const first = applyEvents([a], [{ kind: 'status', id: a.reportId, status: 'queued' }]);
    expect(first.reports[0]?.reportStatus).toBe('queued');
    const again = applyEvents(first.reports, [{ kind: 'status', id: a.reportId, status: 'queued' }]);
    expect(again.reports).toBe(first.reports);
  });

  it('flags an update for an unknown report', () => {
    const result = applyEvents([a], [{ kind: 'status', id: 'nope', status: 'queued' }]);
    expect(result.unknown).toBe(true);
    expect(result.reports).toEqual([a]);
  });

  it('applies a conditional (own request) update only from the expected status', () => {
    const stale = applyEvents([{ ...a, reportStatus: 'processing' }], [
      { kind: 'status', id: a.reportId, status: 'queued', onlyIf: 'pending' },
    ]);
    expect(stale.reports[0]?.reportStatus).toBe('processing');
    const fresh = applyEvents([a], [{ kind: 'status', id: a.reportId, status: 'queued', onlyIf: 'pending' }]);
    expect(fresh.reports[0]?.reportStatus).toBe('queued');
  });
});

describe('reportsReducer', () => {
  it('a snapshot replaces the list and re-applies events received meanwhile', () => {
    const a = makeReport('pending', 1);
    const state = reportsReducer(initialReportsState, {
      type: 'snapshot',
      reports: [a],
      replay: [{ kind: 'status', id: a.reportId, status: 'queued' }],
    });
    expect(state.loaded).toBe(true);
    expect(state.reports[0]?.reportStatus).toBe('queued');
  });

  it('bumps refetchToken for an unknown report', () => {
    const state = reportsReducer(initialReportsState, {
      type: 'events',
      events: [{ kind: 'status', id: 'x', status: 'queued' }],
    });
    expect(state.refetchToken).toBe(1);
  });
});
