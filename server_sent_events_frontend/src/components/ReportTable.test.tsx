import { fireEvent, render, screen, within } from '@testing-library/react';
import { describe, expect, it, vi } from 'vitest';
import { ALLOWED_TRANSITIONS, REPORT_STATUSES, type ReportStatus } from '../types';
import { makeReport } from '../test/fakes';
import { ReportTable } from './ReportTable';
import { ConnectionIndicator } from './ConnectionIndicator';

const EXPECTED_COLOURS: Record<ReportStatus, string> = {
  pending: 'yellow',
  queued: 'orange',
  processing: 'rgb(147, 196, 125)', // #93C47D
  canceled: 'rgb(224, 102, 102)', // #E06666
  failed: 'red',
  completed: 'green',
};

const reports = REPORT_STATUSES.map((status, i) => makeReport(status, i + 1));

describe('ReportTable', () => {
  it('has column header cells', () => {
    render(<ReportTable reports={reports} busy={new Set()} onChangeStatus={vi.fn()} />);
    const headers = screen.getAllByRole('columnheader').map((th) => th.textContent);
    expect(headers).toEqual(['Status', 'Report ID', 'Created', 'Change status']);
  });

  it.each(REPORT_STATUSES)('renders a %s row with its colour, text, id and localized time', (status) => {
    render(<ReportTable reports={reports} busy={new Set()} onChangeStatus={vi.fn()} />);
    const report = reports.find((r) => r.reportStatus === status);
    if (!report) throw new Error('missing fixture');
    const row = screen.getByTestId(`report-row-${report.reportId}`);
    expect(row.getAttribute('data-status')).toBe(status);
    const circle = within(row).getByTestId('status-circle');
    expect(circle.style.backgroundColor).toBe(EXPECTED_COLOURS[status]);
    expect(row.textContent).toContain(status);
    expect(row.textContent).toContain(report.reportId);
    const time = row.querySelector('time');
    expect(time?.getAttribute('dateTime')).toBe(report.createdAt);
    expect(time?.textContent).toBe(new Date(report.createdAt).toLocaleString());
  });

  it.each(REPORT_STATUSES)('offers exactly the allowed next statuses for %s', (status) => {
    render(<ReportTable reports={reports} busy={new Set()} onChangeStatus={vi.fn()} />);
    const report = reports.find((r) => r.reportStatus === status);
    if (!report) throw new Error('missing fixture');
    const row = screen.getByTestId(`report-row-${report.reportId}`);
    const names = within(row).queryAllByRole('button').map((b) => b.textContent);
    expect(names).toEqual([...ALLOWED_TRANSITIONS[status]]);
  });

  it('calls back with the report and the chosen status; busy rows are disabled', () => {
    const onChange = vi.fn();
    const pending = reports[0];
    if (!pending) throw new Error('missing fixture');
    const { rerender } = render(<ReportTable reports={[pending]} busy={new Set()} onChangeStatus={onChange} />);
    fireEvent.click(screen.getByRole('button', { name: 'canceled' }));
    expect(onChange).toHaveBeenCalledWith(pending, 'canceled');
    rerender(<ReportTable reports={[pending]} busy={new Set([pending.reportId])} onChangeStatus={onChange} />);
    expect(screen.getByRole<HTMLButtonElement>('button', { name: 'queued' }).disabled).toBe(true);
  });

  it('says so when there are no reports', () => {
    render(<ReportTable reports={[]} busy={new Set()} onChangeStatus={vi.fn()} />);
    expect(screen.getByText(/No reports yet/)).toBeTruthy();
  });
});

describe('ConnectionIndicator', () => {
  it.each(['connected', 'reconnecting', 'offline'] as const)('shows %s', (state) => {
    render(<ConnectionIndicator state={state} />);
    const el = screen.getByTestId('connection-status');
    expect(el.textContent).toBe(state);
    expect(el.getAttribute('data-state')).toBe(state);
    expect(el.getAttribute('aria-live')).toBe('polite');
  });
});
