#!/bin/bash
#SBATCH --job-name=hello-vcluster
#SBATCH --vcluster=centos7-hpc
# A first virtual-cluster job: print the guests, reach every guest by name from every other guest,
# and run an srun step inside the guests.  Submit with:  sbatch -N3 --vcluster=centos7-hpc hello-vcluster.sh
set -eu
echo "SCRIPT_START $(date +%s.%N)"
echo "== guests of job $SLURM_JOB_ID (from the job environment)"
echo "VC_HOSTS=$VC_HOSTS"
echo "VC_IPS=$VC_IPS"
echo "VC_LOCAL_GUEST=$VC_LOCAL_GUEST"
slurm-vc status

echo "== MPI hostfile (OpenMPI format)"
cat "$VC_HOSTFILE"

echo "== every guest reaches every guest by name"
hosts=$(echo "$VC_HOSTS" | tr ',' ' ')
slurm-vc run --all -- sh -c "for h in $hosts; do ping -c1 -W2 \$h >/dev/null && echo \"\$(hostname) -> \$h ok\" || { echo \"\$(hostname) -> \$h FAILED\"; exit 1; }; done"

echo "== srun inside the guests"
srun -l hostname | sort

echo "SCRIPT_END $(date +%s.%N)"
