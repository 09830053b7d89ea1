import { STATUS_COLORS, type ReportStatus } from '../types';

/** A coloured dot for a status; decorative, the status text sits next to it. */
export function StatusCircle({ status }: { status: ReportStatus }) {
  return (
    <span
      className="status-circle"
      data-testid="status-circle"
      aria-hidden="true"
      style={{ backgroundColor: STATUS_COLORS[status] }}
    />
  );
}
