# Base models moved here from the training app: the table (training_basemodel) stays where it is, only
# Django's state moves; the content type is renamed so permissions and admin history follow the model.

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="catalog", model="basemodel").exists():
        ContentType.objects.filter(app_label="training", model="basemodel").update(app_label="catalog")


def restore_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="training", model="basemodel").exists():
        ContentType.objects.filter(app_label="catalog", model="basemodel").update(app_label="training")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('accounts', '0001_initial'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('training', '0004_trainingtask_evaluate_on_success'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='BaseModel',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=200, unique=True)),
                        ('kind', models.CharField(choices=[('causal-lm', 'Causal LM'), ('encoder', 'Encoder')], max_length=16)),
                        ('path', models.CharField(help_text='Folder the model is loaded from.', max_length=1000)),
                        ('source_path', models.CharField(blank=True, help_text='Where it was found (e.g. the .gguf).', max_length=1000)),
                        ('format', models.CharField(choices=[('hf', 'Hugging Face folder'), ('gguf', 'Converted from GGUF')], default='hf', max_length=8)),
                        ('architecture', models.CharField(blank=True, max_length=200)),
                        ('model_type', models.CharField(blank=True, max_length=100)),
                        ('parameter_count', models.BigIntegerField(default=0)),
                        ('size_bytes', models.BigIntegerField(default=0)),
                        ('tokenizer_present', models.BooleanField(default=False)),
                        ('has_chat_template', models.BooleanField(default=False)),
                        ('config', models.JSONField(blank=True, default=dict, help_text='Selected fields of config.json.')),
                        ('bundled', models.BooleanField(default=False, help_text='Shipped with the installation.')),
                        ('available', models.BooleanField(default=True, help_text='False when its folder vanished at the last scan.')),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                        ('last_scanned_at', models.DateTimeField(blank=True, null=True)),
                        ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('team', models.ForeignKey(blank=True, help_text='Empty: available to every team.', null=True, on_delete=django.db.models.deletion.CASCADE, related_name='base_models', to='accounts.team')),
                    ],
                    options={
                        'db_table': 'training_basemodel',
                        'ordering': ['name'],
                        'indexes': [models.Index(fields=['kind', 'available'], name='training_ba_kind_2030f2_idx')],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, restore_content_type),
    ]
