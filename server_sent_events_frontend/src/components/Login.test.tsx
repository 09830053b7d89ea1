import { fireEvent, render, screen } from '@testing-library/react';
import { describe, expect, it, vi } from 'vitest';
import { Login } from './Login';

describe('Login', () => {
  it('rejects a value that is not a UUID and shows why', () => {
    const onLogin = vi.fn();
    render(<Login onLogin={onLogin} />);
    const input = screen.getByLabelText('User ID (UUID)');
    fireEvent.change(input, { target: { value: 'not-a-uuid' } });
    fireEvent.click(screen.getByRole('button', { name: 'Log in' }));
    expect(onLogin).not.toHaveBeenCalled();
    expect(screen.getByRole('alert').textContent).toMatch(/valid UUID/);
    expect(input.getAttribute('aria-invalid')).toBe('true');
  });

  it('accepts a UUID (trimmed, lower-cased)', () => {
    const onLogin = vi.fn();
    render(<Login onLogin={onLogin} />);
    fireEvent.change(screen.getByLabelText('User ID (UUID)'), {
      target: { value: '  123E4567-E89B-12D3-A456-426614174000 ' },
    });
    fireEvent.click(screen.getByRole('button', { name: 'Log in' }));
    expect(onLogin).toHaveBeenCalledWith('123e4567-e89b-12d3-a456-426614174000');
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('"Generate" fills in a random UUID from crypto.randomUUID', () => {
    const spy = vi.spyOn(crypto, 'randomUUID').mockReturnValue('aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee');
    const onLogin = vi.fn();
    render(<Login onLogin={onLogin} />);
    fireEvent.click(screen.getByRole('button', { name: 'Generate' }));
    expect(spy).toHaveBeenCalled();
    expect(screen.getByLabelText<HTMLInputElement>('User ID (UUID)').value).toBe('aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee');
    fireEvent.submit(screen.getByRole('form', { name: 'Log in' }));
    expect(onLogin).toHaveBeenCalledWith('aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee');
  });
});
