"""The terminal line of a run: a tqdm bar on a terminal, a line per log interval elsewhere."""
import sys




class Progress:
    """tqdm bar on a terminal, a line per log interval elsewhere (CI logs, nohup)."""

    def __init__(self, name, total, initial, quiet):
        self.name, self.total, self.quiet = name, total, quiet
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=name, unit='step', dynamic_ncols=True)

    def step(self, n=1):
        if self.bar:
            self.bar.update(n)

    def log(self, step, text, postfix=None):
        if self.bar:
            if postfix:
                self.bar.set_postfix_str(postfix)
            else:
                self.bar.write(f'{self.name} step {step}: {text}')
        elif not self.quiet:
            print(f'{self.name} step {step}/{self.total}: {text}', flush=True)

    def close(self):
        if self.bar:
            self.bar.close()
