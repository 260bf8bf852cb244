"""image models, image adapters, generated images, job priority

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 15:35:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tuneyard.models


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('image_models',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('project_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('pipeline_class', sa.String(length=100), nullable=False),
    sa.Column('card', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=36), nullable=True),
    sa.Column('created_at', tuneyard.models.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_image_models_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image_models')),
    sa.UniqueConstraint('project_id', 'name', name=op.f('uq_image_models_project_id_name'))
    )
    with op.batch_alter_table('image_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_models_project_id'), ['project_id'], unique=False)

    op.create_table('image_adapters',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('project_id', sa.String(length=36), nullable=False),
    sa.Column('image_model_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=36), nullable=True),
    sa.Column('created_at', tuneyard.models.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['image_model_id'], ['image_models.id'], name=op.f('fk_image_adapters_image_model_id_image_models'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_image_adapters_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image_adapters')),
    sa.UniqueConstraint('image_model_id', 'name', name=op.f('uq_image_adapters_image_model_id_name'))
    )
    with op.batch_alter_table('image_adapters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_image_adapters_image_model_id'), ['image_model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_image_adapters_project_id'), ['project_id'], unique=False)

    op.create_table('generated_images',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('project_id', sa.String(length=36), nullable=False),
    sa.Column('image_model_id', sa.String(length=36), nullable=True),
    sa.Column('job_id', sa.String(length=36), nullable=True),
    sa.Column('recipe', sa.JSON(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=36), nullable=True),
    sa.Column('created_at', tuneyard.models.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['image_model_id'], ['image_models.id'], name=op.f('fk_generated_images_image_model_id_image_models'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_generated_images_job_id_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_generated_images_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generated_images'))
    )
    with op.batch_alter_table('generated_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_generated_images_image_model_id'), ['image_model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_generated_images_project_id'), ['project_id'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('priority')

    with op.batch_alter_table('generated_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generated_images_project_id'))
        batch_op.drop_index(batch_op.f('ix_generated_images_image_model_id'))

    op.drop_table('generated_images')
    with op.batch_alter_table('image_adapters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_adapters_project_id'))
        batch_op.drop_index(batch_op.f('ix_image_adapters_image_model_id'))

    op.drop_table('image_adapters')
    with op.batch_alter_table('image_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_image_models_project_id'))

    op.drop_table('image_models')
