import { useId, useState, type SubmitEvent } from 'react';
import { isUuid, tokenClaims } from '../types';

interface TokenLoginProps {
  onLogin: (session: { userId: string; token: string }) => void;
  /** Why the last session ended (e.g. the token expired), shown above the form. */
  notice?: string | null;
}

/** With access control on: asks for an access token (JWT) whose `sub` is the user's UUID. */
export function TokenLogin({ onLogin, notice = null }: TokenLoginProps) {
  const [value, setValue] = useState('');
  const [error, setError] = useState<string | null>(null);
  const inputId = useId();
  const errorId = useId();
  const hintId = useId();

  const submit = (e: SubmitEvent<HTMLFormElement>) => {
    e.preventDefault();
    const token = value.trim();
    const claims = tokenClaims(token);
    if (!claims) {
      setError('This is not an access token (a JWT: three parts separated by dots).');
      return;
    }
    const userId = claims.sub.toLowerCase();
    if (!isUuid(userId)) {
      setError(`This token is for "${claims.sub}", which is not a user ID (a UUID).`);
      return;
    }
    if (claims.exp !== null && claims.exp * 1000 <= Date.now()) {
      setError('This token has expired. Ask for a new one.');
      return;
    }
    setError(null);
    onLogin({ userId, token });
  };

  return (
    <form className="card login" onSubmit={submit} noValidate aria-labelledby="login-heading">
      <h2 id="login-heading">Log in</h2>
      {notice && (
        <p className="error-text" role="status">
          {notice}
        </p>
      )}
      <label htmlFor={inputId}>Access token (JWT)</label>
      <textarea
        id={inputId}
        name="token"
        rows={4}
        spellCheck={false}
        value={value}
        onChange={(e) => setValue(e.target.value)}
        aria-invalid={error !== null}
        aria-describedby={error ? `${hintId} ${errorId}` : hintId}
      />
      <p id={hintId} className="hint">
        This server requires a token. Its subject (sub) is your user ID; it stays in this tab only.
      </p>
      {error && (
        <p id={errorId} className="error-text" role="alert">
          {error}
        </p>
      )}
      <button type="submit" className="button">
        Log in
      </button>
    </form>
  );
}
