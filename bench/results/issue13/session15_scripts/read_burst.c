#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <string.h>
#include <sys/resource.h>
static double cpu(){ struct rusage r; getrusage(RUSAGE_SELF,&r); return r.ru_utime.tv_sec+r.ru_utime.tv_usec/1e6+r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
#define N 1000
static char out[4<<20];
static size_t outpos;
static unsigned long h;
static void process(const char*b, ssize_t n){ // frame + encode-ish: find newlines, copy each line with a small header
  const char*p=b; const char*e=b+n;
  while(p<e){ const char*nl=memchr(p,'\n',e-p); if(!nl) break; size_t l=nl-p; out[outpos++]=0x0a; out[outpos++]=(char)l; memcpy(out+outpos,p,l); outpos+=l; for(size_t i=0;i<l;i+=64) h+=p[i]; p=nl+1;}
  if(outpos>(3<<20)) outpos=0;
}
int main(int argc,char**argv){
  int mode=atoi(argv[1]); int fds[N], wfds[N]; static char bufs[N][4096]; static char buf[65536]; char line[203];
  memset(line,'x',202); line[202]='\n';
  for(int i=0;i<N;i++){ char p[64]; sprintf(p,"/tmp/fdg/f%d",i); wfds[i]=open(p,O_CREAT|O_TRUNC|O_WRONLY,0644); fds[i]=open(p,O_RDONLY|O_NOATIME);}
  static off_t off[N]; static ssize_t got[N];
  double total=0; long reads=0;
  for(int pass=0;pass<3000;pass++){
    for(int i=0;i<N;i++) for(int k=0;k<4;k++) write(wfds[i],line,203);
    double t0=cpu();
    if(mode==0){ for(int i=0;i<N;i++){ ssize_t r=pread(fds[i],buf,sizeof buf,off[i]); off[i]+=r; process(buf,r);} }
    else { for(int i=0;i<N;i++){ got[i]=pread(fds[i],bufs[i],4096,off[i]); off[i]+=got[i];} for(int i=0;i<N;i++) process(bufs[i],got[i]); }
    total+=cpu()-t0; reads+=N;
    if(pass%300==299) for(int i=0;i<N;i++){ftruncate(wfds[i],0); lseek(wfds[i],0,SEEK_SET); off[i]=0;}
  }
  printf("mode=%d us/read(incl process) %.3f h=%lu\n",mode,total*1e6/reads,h);
}
