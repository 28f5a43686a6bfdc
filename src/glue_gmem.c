// SPDX-License-Identifier: GPL-2.0-only
/*
 * guest_memfd's file-system half (upstream virt/kvm/guest_memfd.c): the pseudo
 * file system, its inodes (the memory: a page cache of unevictable, unmovable
 * folios), the file (fallocate, mmap, release) and the folio lookup the MMU maps
 * from. What is KVM's — which memslots a file backs, unmapping them from the guest,
 * the VM reference — is Rust (src/guest_memfd.rs), reached through the
 * kvm_rs_gmem_*() callbacks with the file's owner pointer. See include/kvm_rs_glue.h.
 */
#include <linux/anon_inodes.h>
#include <linux/falloc.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/magic.h>
#include <linux/mempolicy.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pagemap.h>
#include <linux/pseudo_fs.h>
#include <linux/slab.h>
#include <uapi/linux/kvm.h>

#include "../include/kvm_rs_glue.h"

static struct vfsmount *kvm_gmem_mnt;
static struct kmem_cache *kvm_gmem_inode_cachep;

/*
 * Upstream's gmem_inode. In 7.2 an inode has exactly one file (no ioctl links a
 * second VM's view), so the file's owner is kept here, where the page-cache
 * callbacks (punch hole, memory errors) find it; NULL once the file is released.
 * Set and cleared under the mapping's invalidate_lock.
 */
struct gmem_inode {
	struct shared_policy policy;
	struct inode vfs_inode;
	u64 flags;
	void *owner;
};

static __always_inline struct gmem_inode *GMEM_I(struct inode *inode)
{
	return container_of(inode, struct gmem_inode, vfs_inode);
}

/* The pfn of @index within @folio. */
static inline unsigned long folio_file_pfn(struct folio *folio, pgoff_t index)
{
	return folio_pfn(folio) + (index & (folio_nr_pages(folio) - 1));
}

/* kvm_gmem_get_folio(): a locked folio of the page cache, allocated if absent. */
static struct folio *kvm_gmem_get_folio(struct inode *inode, pgoff_t index)
{
	struct mempolicy *policy;
	struct folio *folio;

	folio = filemap_lock_folio(inode->i_mapping, index);
	if (!IS_ERR(folio))
		return folio;

	policy = mpol_shared_policy_lookup(&GMEM_I(inode)->policy, index);
	folio = __filemap_get_folio_mpol(inode->i_mapping, index,
					 FGP_LOCK | FGP_CREAT,
					 mapping_gfp_mask(inode->i_mapping), policy);
	mpol_cond_put(policy);
	/* Only order-0 folios are ever allocated (no large-folio mapping flag). */
	WARN_ON_ONCE(!IS_ERR(folio) && folio_order(folio));
	return folio;
}

/* Zeroes a folio the guest or userspace is about to see for the first time. */
static void kvm_gmem_clear_folio(struct folio *folio)
{
	if (!folio_test_uptodate(folio)) {
		clear_highpage(folio_page(folio, 0));
		folio_mark_uptodate(folio);
	}
}

static long kvm_gmem_punch_hole(struct inode *inode, loff_t offset, loff_t len)
{
	pgoff_t start = offset >> PAGE_SHIFT;
	pgoff_t end = (offset + len) >> PAGE_SHIFT;
	void *owner;

	/* Bindings stay put across the invalidation, so start and end balance. */
	filemap_invalidate_lock(inode->i_mapping);
	owner = GMEM_I(inode)->owner;
	if (owner)
		kvm_rs_gmem_invalidate_start(owner, start, end);
	truncate_inode_pages_range(inode->i_mapping, offset, offset + len - 1);
	if (owner)
		kvm_rs_gmem_invalidate_end(owner);
	filemap_invalidate_unlock(inode->i_mapping);
	return 0;
}

static long kvm_gmem_allocate(struct inode *inode, loff_t offset, loff_t len)
{
	struct address_space *mapping = inode->i_mapping;
	pgoff_t index, end;
	long r = 0;

	/* The size is fixed at creation. */
	if (offset + len > i_size_read(inode))
		return -EINVAL;

	filemap_invalidate_lock_shared(mapping);
	end = (offset + len) >> PAGE_SHIFT;
	for (index = offset >> PAGE_SHIFT; index < end;) {
		struct folio *folio;

		if (signal_pending(current)) {
			r = -EINTR;
			break;
		}
		folio = kvm_gmem_get_folio(inode, index);
		if (IS_ERR(folio)) {
			r = PTR_ERR(folio);
			break;
		}
		index = folio_next_index(folio);
		folio_unlock(folio);
		folio_put(folio);
		cond_resched();
	}
	filemap_invalidate_unlock_shared(mapping);
	return r;
}

static long kvm_gmem_fallocate(struct file *file, int mode, loff_t offset, loff_t len)
{
	long ret;

	if (!(mode & FALLOC_FL_KEEP_SIZE))
		return -EOPNOTSUPP;
	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE))
		return -EOPNOTSUPP;
	if (!PAGE_ALIGNED(offset) || !PAGE_ALIGNED(len))
		return -EINVAL;

	if (mode & FALLOC_FL_PUNCH_HOLE)
		ret = kvm_gmem_punch_hole(file_inode(file), offset, len);
	else
		ret = kvm_gmem_allocate(file_inode(file), offset, len);
	if (!ret)
		file_modified(file);
	return ret;
}

/*
 * kvm_gmem_release(): the owner unbinds its memslots and unmaps them from the
 * guest; the memory itself lives with the inode.
 */
static int kvm_gmem_release(struct inode *inode, struct file *file)
{
	void *owner = file->private_data;

	filemap_invalidate_lock(inode->i_mapping);
	GMEM_I(inode)->owner = NULL;
	filemap_invalidate_unlock(inode->i_mapping);
	kvm_rs_gmem_release(owner);
	return 0;
}

/* kvm_gmem_fault_user_mapping(): only shared memory may be mapped by userspace. */
static vm_fault_t kvm_gmem_fault_user_mapping(struct vm_fault *vmf)
{
	struct inode *inode = file_inode(vmf->vma->vm_file);
	struct folio *folio;

	if (((loff_t)vmf->pgoff << PAGE_SHIFT) >= i_size_read(inode))
		return VM_FAULT_SIGBUS;
	if (!(GMEM_I(inode)->flags & GUEST_MEMFD_FLAG_INIT_SHARED))
		return VM_FAULT_SIGBUS;

	folio = kvm_gmem_get_folio(inode, vmf->pgoff);
	if (IS_ERR(folio)) {
		if (PTR_ERR(folio) == -EAGAIN)
			return VM_FAULT_RETRY;
		return vmf_error(PTR_ERR(folio));
	}
	if (WARN_ON_ONCE(folio_test_large(folio))) {
		folio_unlock(folio);
		folio_put(folio);
		return VM_FAULT_SIGBUS;
	}
	kvm_gmem_clear_folio(folio);
	vmf->page = folio_file_page(folio, vmf->pgoff);
	return VM_FAULT_LOCKED;
}

#ifdef CONFIG_NUMA
static int kvm_gmem_set_policy(struct vm_area_struct *vma, struct mempolicy *mpol)
{
	return mpol_set_shared_policy(&GMEM_I(file_inode(vma->vm_file))->policy, vma, mpol);
}

static struct mempolicy *kvm_gmem_get_policy(struct vm_area_struct *vma,
					     unsigned long addr, pgoff_t *ilx)
{
	pgoff_t pgoff = vma->vm_pgoff + ((addr - vma->vm_start) >> PAGE_SHIFT);
	struct inode *inode = file_inode(vma->vm_file);

	*ilx = inode->i_ino;
	/* NULL, not the task's policy, when mbind() set none (as upstream). */
	return mpol_shared_policy_lookup(&GMEM_I(inode)->policy, pgoff);
}
#endif

static const struct vm_operations_struct kvm_gmem_vm_ops = {
	.fault = kvm_gmem_fault_user_mapping,
#ifdef CONFIG_NUMA
	.get_policy = kvm_gmem_get_policy,
	.set_policy = kvm_gmem_set_policy,
#endif
};

static int kvm_gmem_mmap(struct file *file, struct vm_area_struct *vma)
{
	if (!(GMEM_I(file_inode(file))->flags & GUEST_MEMFD_FLAG_MMAP))
		return -ENODEV;
	/* No copy-on-write: a private copy would escape the guest's view. */
	if ((vma->vm_flags & (VM_SHARED | VM_MAYSHARE)) != (VM_SHARED | VM_MAYSHARE))
		return -EINVAL;
	vma->vm_ops = &kvm_gmem_vm_ops;
	return 0;
}

static struct file_operations kvm_gmem_fops = {
	.mmap = kvm_gmem_mmap,
	.open = generic_file_open,
	.release = kvm_gmem_release,
	.fallocate = kvm_gmem_fallocate,
};

static int kvm_gmem_migrate_folio(struct address_space *mapping, struct folio *dst,
				  struct folio *src, enum migrate_mode mode)
{
	/* The mapping is unmovable: migration never asks. */
	WARN_ON_ONCE(1);
	return -EINVAL;
}

/*
 * kvm_gmem_error_folio(): a poisoned folio leaves the guest; it stays in the
 * file, and the next guest access gets -EHWPOISON from kvm_glue_gmem_get_page().
 */
static int kvm_gmem_error_folio(struct address_space *mapping, struct folio *folio)
{
	struct inode *inode = mapping->host;
	void *owner;

	filemap_invalidate_lock_shared(mapping);
	owner = GMEM_I(inode)->owner;
	if (owner) {
		kvm_rs_gmem_invalidate_start(owner, folio->index,
					     folio->index + folio_nr_pages(folio));
		kvm_rs_gmem_invalidate_end(owner);
	}
	filemap_invalidate_unlock_shared(mapping);
	return MF_DELAYED;
}

static const struct address_space_operations kvm_gmem_aops = {
	.dirty_folio = noop_dirty_folio,
	.migrate_folio = kvm_gmem_migrate_folio,
	.error_remove_folio = kvm_gmem_error_folio,
};

static int kvm_gmem_setattr(struct mnt_idmap *idmap, struct dentry *dentry,
			    struct iattr *attr)
{
	return -EINVAL;
}

static const struct inode_operations kvm_gmem_iops = {
	.setattr = kvm_gmem_setattr,
};

/* __kvm_gmem_create(). */
int kvm_glue_gmem_create(void *owner, unsigned long long size, unsigned long long flags)
{
	static const char *name = "[kvm-gmem]";
	struct inode *inode;
	struct file *file;
	int fd, err;

	fd = get_unused_fd_flags(0);
	if (fd < 0)
		return fd;

	/* __fput() will take care of fops_put(). */
	if (!fops_get(&kvm_gmem_fops)) {
		err = -ENOENT;
		goto err_fd;
	}

	inode = anon_inode_make_secure_inode(kvm_gmem_mnt->mnt_sb, name, NULL);
	if (IS_ERR(inode)) {
		err = PTR_ERR(inode);
		goto err_fops;
	}
	inode->i_op = &kvm_gmem_iops;
	inode->i_mapping->a_ops = &kvm_gmem_aops;
	inode->i_mode |= S_IFREG;
	inode->i_size = size;
	mapping_set_gfp_mask(inode->i_mapping, GFP_HIGHUSER);
	mapping_set_inaccessible(inode->i_mapping);
	/* Unmovable mappings are supposed to be marked unevictable as well. */
	WARN_ON_ONCE(!mapping_unevictable(inode->i_mapping));
	GMEM_I(inode)->flags = flags;
	GMEM_I(inode)->owner = owner;

	file = alloc_file_pseudo(inode, kvm_gmem_mnt, name, O_RDWR, &kvm_gmem_fops);
	if (IS_ERR(file)) {
		err = PTR_ERR(file);
		goto err_inode;
	}
	file->f_flags |= O_LARGEFILE;
	file->private_data = owner;
	fd_install(fd, file);
	return fd;

err_inode:
	iput(inode);
err_fops:
	fops_put(&kvm_gmem_fops);
err_fd:
	put_unused_fd(fd);
	return err;
}

int kvm_glue_gmem_fget(unsigned int fd, void **file, void **owner, unsigned long long *size,
		       unsigned long long *flags)
{
	struct file *f = fget(fd);

	if (!f)
		return -EBADF;
	if (f->f_op != &kvm_gmem_fops) {
		fput(f);
		return -EINVAL;
	}
	*file = f;
	*owner = f->private_data;
	*size = i_size_read(file_inode(f));
	*flags = GMEM_I(file_inode(f))->flags;
	return 0;
}

void kvm_glue_fput(void *file)
{
	fput(file);
}

/* The folio lookup of kvm_gmem_get_pfn(): a zeroed, up-to-date page, referenced. */
int kvm_glue_gmem_get_page(void *file, unsigned long index, unsigned long long *phys)
{
	struct folio *folio = kvm_gmem_get_folio(file_inode((struct file *)file), index);

	if (IS_ERR(folio))
		return PTR_ERR(folio);
	if (folio_test_hwpoison(folio)) {
		folio_unlock(folio);
		folio_put(folio);
		return -EHWPOISON;
	}
	kvm_gmem_clear_folio(folio);
	folio_unlock(folio);
	*phys = PFN_PHYS(folio_file_pfn(folio, index));
	return 0;
}

void kvm_glue_put_page_phys(unsigned long long phys)
{
	put_page(pfn_to_page(PHYS_PFN(phys)));
}

static void kvm_gmem_init_inode_once(void *__gi)
{
	struct gmem_inode *gi = __gi;

	/* Only what is idempotent across every use of the object (slab ctor). */
	inode_init_once(&gi->vfs_inode);
}

static struct inode *kvm_gmem_alloc_inode(struct super_block *sb)
{
	struct gmem_inode *gi = alloc_inode_sb(sb, kvm_gmem_inode_cachep, GFP_KERNEL);

	if (!gi)
		return NULL;
	mpol_shared_policy_init(&gi->policy, NULL);
	gi->flags = 0;
	gi->owner = NULL;
	return &gi->vfs_inode;
}

static void kvm_gmem_destroy_inode(struct inode *inode)
{
	mpol_free_shared_policy(&GMEM_I(inode)->policy);
}

static void kvm_gmem_free_inode(struct inode *inode)
{
	kmem_cache_free(kvm_gmem_inode_cachep, GMEM_I(inode));
}

static const struct super_operations kvm_gmem_super_operations = {
	.statfs = simple_statfs,
	.alloc_inode = kvm_gmem_alloc_inode,
	.destroy_inode = kvm_gmem_destroy_inode,
	.free_inode = kvm_gmem_free_inode,
};

static int kvm_gmem_init_fs_context(struct fs_context *fc)
{
	struct pseudo_fs_context *ctx;

	if (!init_pseudo(fc, GUEST_MEMFD_MAGIC))
		return -ENOMEM;
	ctx = fc->fs_private;
	ctx->ops = &kvm_gmem_super_operations;
	return 0;
}

static struct file_system_type kvm_gmem_fs = {
	.name = "guest_memfd",
	.init_fs_context = kvm_gmem_init_fs_context,
	.kill_sb = kill_anon_super,
};

/* kvm_gmem_init(): at kvm_init() time, the files owned by the vendor module. */
int kvm_glue_gmem_init(void *module)
{
	struct kmem_cache_args args = {
		.align = 0,
		.ctor = kvm_gmem_init_inode_once,
	};

	kvm_gmem_fops.owner = module;
	kvm_gmem_inode_cachep = kmem_cache_create("kvm_gmem_inode_cache",
						  sizeof(struct gmem_inode), &args,
						  SLAB_ACCOUNT);
	if (!kvm_gmem_inode_cachep)
		return -ENOMEM;
	kvm_gmem_mnt = kern_mount(&kvm_gmem_fs);
	if (IS_ERR(kvm_gmem_mnt)) {
		int r = PTR_ERR(kvm_gmem_mnt);

		kvm_gmem_mnt = NULL;
		kmem_cache_destroy(kvm_gmem_inode_cachep);
		return r;
	}
	kvm_gmem_mnt->mnt_flags |= MNT_NOEXEC;
	return 0;
}

void kvm_glue_gmem_exit(void)
{
	kern_unmount(kvm_gmem_mnt);
	kvm_gmem_mnt = NULL;
	/* Inodes are freed after an RCU grace period (free_inode). */
	rcu_barrier();
	kmem_cache_destroy(kvm_gmem_inode_cachep);
}
