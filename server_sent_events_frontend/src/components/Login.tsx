import { useId, useState, type SubmitEvent } from 'react';
import { isUuid } from '../types';

interface LoginProps {
  onLogin: (userId: string) => void;
  initialValue?: string;
}

/** Asks for the user's UUID; "Generate" fills in a random one. */
export function Login({ onLogin, initialValue = '' }: LoginProps) {
  const [value, setValue] = useState(initialValue);
  const [error, setError] = useState<string | null>(null);
  const inputId = useId();
  const errorId = useId();
  const hintId = useId();

  const submit = (e: SubmitEvent<HTMLFormElement>) => {
    e.preventDefault();
    const userId = value.trim().toLowerCase();
    if (!isUuid(userId)) {
      setError('Please enter a valid UUID, e.g. 123e4567-e89b-12d3-a456-426614174000.');
      return;
    }
    setError(null);
    onLogin(userId);
  };

  const generate = () => {
    setValue(crypto.randomUUID());
    setError(null);
  };

  return (
    <form className="card login" onSubmit={submit} noValidate aria-labelledby="login-heading">
      <h2 id="login-heading">Log in</h2>
      <label htmlFor={inputId}>User ID (UUID)</label>
      <div className="login__row">
        <input
          id={inputId}
          name="userId"
          type="text"
          inputMode="text"
          autoComplete="username"
          spellCheck={false}
          value={value}
          onChange={(e) => setValue(e.target.value)}
          aria-invalid={error !== null}
          aria-describedby={error ? `${hintId} ${errorId}` : hintId}
          placeholder="xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
        />
        <button type="button" className="button button--secondary" onClick={generate}>
          Generate
        </button>
      </div>
      <p id={hintId} className="hint">
        Your reports are stored under this ID. Use the same ID in another tab to see them live.
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
