import type { ConnectionState } from '../hooks/useReportStream';
import type { StreamRole } from '../reportStream';

const HINTS: Record<ConnectionState, string> = {
  connected: 'Live updates are on.',
  reconnecting: 'Connecting to live updates…',
  offline: 'No connection to the server; retrying.',
};

/**
 * Live-update connection state. Its text is exactly the state name; the coloured dot is CSS
 * (::before), so it adds no text. A polite live region: screen readers hear every change.
 * `data-stream-role` says whether this tab holds the browser's stream or hears it from the tab
 * that does.
 */
export function ConnectionIndicator({ state, role = 'own' }: { state: ConnectionState; role?: StreamRole }) {
  return (
    <p className="connection-wrap">
      <span className="connection-label" id="connection-label">
        Live updates:
      </span>{' '}
      <span
        className={`connection connection--${state}`}
        data-testid="connection-status"
        data-state={state}
        data-stream-role={role}
        role="status"
        aria-live="polite"
        aria-describedby="connection-label"
        title={HINTS[state]}
      >
        {state}
      </span>
    </p>
  );
}
